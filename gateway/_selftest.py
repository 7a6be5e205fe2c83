"""``kemon gateway selftest``: the commissioning checks a field technician runs on a freshly
installed gateway. Each check yields one :class:`~gateway._selftest_report.CheckResult`.

=================  ==========================================================================
id                 what passes
=================  ==========================================================================
``certificate``    the gateway's key matches its certificate, which is valid now (warn when
                   fewer than 30 days are left); ``certificate.<dest>`` for a destination
                   that presents a certificate of its own
``clock``          the kernel says the clock is synchronised (``adjtimex(2)``, else
                   ``timedatectl``) and it reads after 2020
``disk``           the store's file system has room for what the store will still grow to
                   (``gateway._sizing.estimate_store``)
``store``          a probe SQLite database (WAL, fsync) can be written in the data directory;
                   an existing store opens, is a Kemon store, and takes a write lock that is
                   rolled back at once (safe beside a running gateway)
``port.<bus>``     the serial port exists and opens with the bus's settings, or the TCP
                   endpoint accepts a connection
``meter.<name>``   the meter answers, every point once, each value plausible (:func:`implausible`)
``destination.…``  TLS handshake (the broker verified against ``ca_file``) and MQTT 5 CONNECT
                   with the gateway's certificate; CONNACK success, then a clean DISCONNECT
=================  ==========================================================================

Checks run concurrently (buses in parallel; one transaction at a time on a bus, as the poller
does); every check has its own deadline, so a hung meter, port or broker costs that check a
failure and nothing else. Meters are read through the gateway's own drivers and
:class:`~gateway._poller.BusPoller` (same retries and deadlines as ``run``); destinations are
probed with the uplink's :class:`~protocol._mqtt_publish.MqttLink`, under a client id of their
own (``…:selftest``) so a running gateway's session is not taken over; nothing is published.

The clock is read through a seam (``clock=``, a :data:`ClockProbe`) so tests can drive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography import x509

from protocol._cli import one_line
from protocol._files import write_atomically
from protocol._mqtt_publish import LinkError, MqttLink, tls_for

from ._clock import ClockState, clock_state
from ._delivery import IdentityError, load_identity
from ._instance import running_pid
from ._model import BusConfig, DestinationConfig, GatewayConfig, MeterConfig
from ._poller import BusPoller
from ._selftest_judge import (
    CERT_WARN_DAYS,
    implausible,
    judge_certificate,
    judge_clock,
    judge_disk,
)
from ._selftest_judge import (
    Outcome as _Outcome,
)
from ._selftest_report import CheckResult, SelftestReport, Status, render_html, render_json
from ._sizing import estimate_store
from ._store import Store, StoreError, store_file_bytes
from .drivers import open_driver
from .drivers._base import Driver
from .drivers._port_open import open_off_loop

__all__ = ["CERT_WARN_DAYS", "DEFAULT_TIMEOUT", "ClockProbe", "ClockState", "implausible",
           "judge_certificate", "judge_clock", "judge_disk", "kernel_clock", "report_paths",
           "run_selftest", "write_reports"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0     # seconds per check
_MQTT_PROBE_SUFFIX = ":selftest"



# --- clock and disk -----------------------------------------------------------------------

ClockProbe = Callable[[], ClockState]
kernel_clock: ClockProbe = clock_state


def _disk(cfg: GatewayConfig) -> _Outcome:
    size = estimate_store(cfg)
    where = cfg.gateway.data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    st = os.statvfs(where)
    used = store_file_bytes(cfg.gateway.data_dir / "store.db")
    status, text, measured = judge_disk(st.f_bavail * st.f_frsize, used, size.retention_bytes,
                                        size.budget_bytes, size.days_that_fit,
                                        cfg.store.retention_days)
    return status, text, {"filesystem_of": str(where), **measured}


# --- store --------------------------------------------------------------------------------

def _probe_database(data_dir: Path) -> None:
    """Create, write (WAL, fsync) and remove a scratch SQLite database beside the store."""
    probe = data_dir / f".selftest-{os.getpid()}.db"
    try:
        conn = sqlite3.connect(probe, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"WAL journal refused (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("CREATE TABLE probe (x BLOB)")
            conn.execute("INSERT INTO probe VALUES (?)", (os.urandom(4096),))
        finally:
            conn.close()
    finally:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{probe}{suffix}")


def _store(data_dir: Path) -> _Outcome:
    measured: dict[str, Any] = {"data_dir": str(data_dir)}
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return (Status.FAIL, f"cannot create the data directory {data_dir}: "
                f"{exc.strerror or exc}", measured)
    try:
        _probe_database(data_dir)
    except (OSError, sqlite3.Error) as exc:
        return Status.FAIL, f"cannot write a database in {data_dir}: {exc}", measured
    path = data_dir / "store.db"
    if not path.exists():
        return (Status.PASS, f"{data_dir} takes a SQLite WAL database; the store is created "
                "when the gateway first runs", measured)
    try:
        with Store.open_readonly(path) as store:
            measured["last_reading_id"] = store.last_id()
    except StoreError as exc:
        return Status.FAIL, str(exc), measured
    # Take the write lock and let it go at once: proves the file is writable and harms
    # nothing if the gateway runs (it waits up to its busy timeout for far less).
    conn = sqlite3.connect(path, isolation_level=None, timeout=2.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return (Status.WARN, f"{path} is a Kemon store, but another process held its write "
                    "lock for 2 s (the running gateway?)", measured)
        return Status.FAIL, f"{path} cannot be written: {exc}", measured
    finally:
        conn.close()
    return (Status.PASS, f"{path} is a Kemon store and writable "
            f"(last reading id {measured['last_reading_id']})", measured)


# --- the run ------------------------------------------------------------------------------

def _version() -> str:
    try:
        return metadata.version("kemon")
    except metadata.PackageNotFoundError:
        return "unknown"


def _certificate_problem(cert_file: Path) -> str | None:
    """Why the certificate in ``cert_file`` is not valid now ("expired on …"), or None."""
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    status, detail, _ = judge_certificate(cert, time.time())
    return detail if status is Status.FAIL else None


def _serial_facts(bus: BusConfig) -> tuple[bool, dict[str, Any]]:
    """Whether the bus's serial device exists, and what to record about it."""
    port = bus.port or ""
    return os.path.exists(port), {
        "kind": bus.kind, "port": port, "device": os.path.realpath(port),
        "settings": f"{bus.baudrate} {bus.bytesize}{bus.parity}{bus.stopbits}"}


def _port_labels(bus: BusConfig) -> tuple[str, str, str]:
    """The id and the Chinese and English labels of a bus's port check."""
    if bus.is_tcp:
        return f"port.{bus.name}", f"网络连接 {bus.name}", f"Network link {bus.name}"
    return f"port.{bus.name}", f"串口 {bus.name}", f"Serial port {bus.name}"


class _Selftest:
    def __init__(self, cfg: GatewayConfig, timeout: float, clock: ClockProbe,
                 driver_factory: Callable[[BusConfig], Driver]) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self.clock = clock
        self.driver_factory = driver_factory

    async def check(self, check_id: str, zh: str, en: str,
                    work: Callable[[], Awaitable[_Outcome]]) -> CheckResult:
        """Run one check within the deadline; a check that raises fails with the reason."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                status, detail, measured = await work()
        except TimeoutError:
            status, detail, measured = (Status.FAIL, f"no result within {self.timeout:g} s",
                                        {})
        except Exception as exc:    # a check that breaks fails; the others go on
            log.debug("check %s failed", check_id, exc_info=True)
            status, detail, measured = Status.FAIL, one_line(exc), {}
        return CheckResult(check_id, zh, en, status, detail, measured,
                           time.monotonic() - started)

    def blocking(self, func: Callable[[], _Outcome], what: str) -> Callable[[], Awaitable[
            _Outcome]]:
        """``func`` in a daemon thread (a hung file system or subprocess cannot hold the
        process at exit)."""
        async def work() -> _Outcome:
            return await open_off_loop(func, lambda _r: None, deadline=self.timeout + 1,
                                       what=f"selftest {what}")
        return work

    # -- checks ---------------------------------------------------------------------------

    def _clock_outcome(self) -> _Outcome:
        return judge_clock(self.clock(), require_sync=self.cfg.gateway.require_time_sync)

    def _certificates(self) -> list[Awaitable[CheckResult]]:
        cfg = self.cfg
        if not cfg.destinations and cfg.gateway.cert_file is None:
            async def nothing() -> _Outcome:
                return (Status.WARN, "no [[destination]]: this gateway reports to no platform",
                        {})
            return [self.check("certificate", "网关证书", "Gateway certificate", nothing)]
        own = self.blocking(functools.partial(self._certificate, cfg.gateway.key_file,
                                              cfg.gateway.cert_file), "certificate")
        out: list[Awaitable[CheckResult]] = [
            self.check("certificate", "网关证书", "Gateway certificate", own)]
        seen = {cfg.gateway.cert_file}
        for dest in cfg.destinations:
            if dest.cert_file is not None and dest.cert_file not in seen:
                seen.add(dest.cert_file)
                out.append(self.check(
                    f"certificate.{dest.name}", f"{dest.name} 证书",
                    f"Certificate for {dest.name}", self.blocking(
                        functools.partial(self._certificate, dest.key_file, dest.cert_file),
                        "certificate")))
        return out

    @staticmethod
    def _certificate(key_file: Path | None, cert_file: Path | None) -> _Outcome:
        try:
            _, pem = load_identity(key_file, cert_file)
        except IdentityError as exc:
            return Status.FAIL, str(exc), {}
        status, detail, measured = judge_certificate(
            x509.load_pem_x509_certificate(pem.encode("ascii")), time.time())
        return status, detail, {"file": str(cert_file), **measured}

    async def _bus(self, bus: BusConfig) -> list[CheckResult]:
        meters = [m for m in self.cfg.meters if m.bus == bus.name]
        driver = self.driver_factory(bus)
        port_id, zh, en = _port_labels(bus)
        results: list[CheckResult] = []
        try:
            port = await self.check(port_id, zh, en, lambda: self._open(bus, driver))
            results.append(port)
            poller = BusPoller(bus, driver)
            for meter in meters:
                if port.status is Status.FAIL:
                    results.append(CheckResult(
                        f"meter.{meter.name}", f"仪表 {meter.name}", f"Meter {meter.name}",
                        Status.FAIL, f"not read: bus {bus.name} is not available",
                        {"bus": bus.name, "address": meter.address}))
                    continue
                result = await self.check(
                    f"meter.{meter.name}", f"仪表 {meter.name}", f"Meter {meter.name}",
                    functools.partial(self._read, poller, meter))
                results.append(result)
                if result.status is Status.FAIL:
                    await poller.close()   # what a failed meter left on the link goes with it
        finally:
            with contextlib.suppress(OSError):
                await driver.close()
        return results

    @staticmethod
    async def _open(bus: BusConfig, driver: Driver) -> _Outcome:
        if bus.is_tcp:
            where = f"{bus.host}:{bus.tcp_port}"
            measured: dict[str, Any] = {"kind": bus.kind, "endpoint": where}
        else:
            assert bus.port is not None
            where = bus.port
            present, measured = _serial_facts(bus)
            if not present:
                return (Status.FAIL, f"{bus.port} does not exist (adapter unplugged, wrong name, "
                        "or udev rule missing?)", measured)
        started = time.monotonic()
        try:
            await driver.connect()
        except OSError as exc:
            return Status.FAIL, f"cannot open {where}: {one_line(exc)}", measured
        measured["open_ms"] = round((time.monotonic() - started) * 1000, 1)
        if bus.is_tcp:
            return Status.PASS, f"connected to {where}", measured
        return Status.PASS, f"{where} opened ({measured['settings']})", measured

    async def _read(self, poller: BusPoller, meter: MeterConfig) -> _Outcome:
        poll = (await poller.poll([meter], int(time.time())))[0]
        stats = poller.stats[meter.name]
        measured: dict[str, Any] = {"bus": meter.bus, "address": meter.address,
                                    "requests": stats.requests}
        if poll.error is not None or poll.result is None:
            detail = poll.error.detail if poll.error is not None else "no answer"
            return Status.FAIL, f"address {meter.address}: {detail}", measured
        measured["latency_ms"] = stats.last_latency_ms
        values: dict[str, Any] = {}
        problems: list[str] = []
        for point in meter.points:
            label = point.key or point.code
            error = poll.result.errors.get(point.code)
            value = poll.values.get(point.code)
            if error is not None or value is None:
                problems.append(f"{label}: {error.detail if error else 'no value'}")
                continue
            values[label] = f"{value:.6g} {point.unit}".strip()
            reason = implausible(point, value)
            if reason is not None:
                problems.append(f"{label} = {reason}")
        measured["values"] = values
        if problems:
            shown = "; ".join(problems[:4])
            more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
            hint = (" — check register, type, word order and scale"
                    if any("plausible" in p for p in problems) else "")
            return Status.FAIL, f"{shown}{more}{hint}", measured
        return (Status.PASS, f"{len(values)} points read in {stats.last_latency_ms:g} ms, "
                "all plausible", measured)

    async def _destination(self, dest: DestinationConfig) -> _Outcome:
        gw = self.cfg.gateway
        client_id = f"{gw.id}@{gw.unit}:{dest.name}{_MQTT_PROBE_SUFFIX}"
        measured: dict[str, Any] = {"url": dest.url, "client_id": client_id, "tls": dest.tls}
        try:
            tls = tls_for(dest.tls, dest.ca_file, dest.cert_file, dest.key_file)
        except LinkError as exc:
            return Status.FAIL, exc.reason, measured
        link = MqttLink(name=f"selftest[{dest.name}]", host=dest.host, port=dest.port,
                        client_id=client_id, keepalive=dest.keepalive, tls=tls, will=None,
                        session_expiry=0, receive_maximum=1,
                        on_puback=lambda _mid, _reason: None, on_message=lambda _m: None)
        started = time.monotonic()
        try:
            try:
                # a little under the check's deadline, so that the link says what hung
                info = await link.connect(self.timeout * 0.8)
            except LinkError as exc:
                reason = exc.reason
                if "certificate verify failed" in reason and dest.ca_file is not None:
                    reason += f" — did the CA in {dest.ca_file.name} sign the broker's certificate?"
                elif not exc.connected and dest.cert_file is not None:
                    # The broker's alert about our certificate may be lost (TLS 1.3 sends it
                    # after the handshake): say what is wrong with it if we can see it.
                    problem = _certificate_problem(dest.cert_file)
                    if problem and problem not in reason:
                        reason += f" — our certificate {problem}"
                return Status.FAIL, reason, measured
            measured["connack_ms"] = round((time.monotonic() - started) * 1000, 1)
            measured["receive_maximum"] = info.receive_maximum
            await link.disconnect(2.0)
        finally:
            link.abort("selftest done")
        if not dest.tls:
            return (Status.WARN, f"MQTT CONNECT accepted by {dest.host}:{dest.port} without "
                    "TLS (insecure = true): not for production", measured)
        verified = dest.ca_file.name if dest.ca_file is not None else "the system trust store"
        return (Status.PASS, f"TLS verified against {verified}; MQTT CONNECT accepted by "
                f"{dest.host}:{dest.port} in {measured['connack_ms']:g} ms", measured)

    async def _instance(self, pid: int | None) -> _Outcome:
        where = self.cfg.gateway.data_dir
        if pid is None:
            return Status.PASS, f"no gateway is running on {where}: the buses are free", {}
        who = f" (pid {pid})" if pid else ""
        return (Status.FAIL, f"a gateway{who} is running on {where}: stop it (sudo systemctl "
                "stop kemon-gateway) and test again — two masters on one RS-485 line garble "
                "each other", {"pid": pid})

    async def _not_while_running(self, bus: BusConfig) -> list[CheckResult]:
        why = "not tested while the gateway runs"
        out = [CheckResult(*_port_labels(bus), Status.FAIL, why, {}, 0.0)]
        out += [CheckResult(f"meter.{m.name}", f"仪表 {m.name}", f"Meter {m.name}",
                            Status.FAIL, why, {"bus": bus.name, "address": m.address}, 0.0)
                for m in self.cfg.meters if m.bus == bus.name]
        return out

    async def run(self) -> list[CheckResult]:
        cfg = self.cfg
        jobs: list[Awaitable[CheckResult | list[CheckResult]]] = [
            *self._certificates(),
            self.check("clock", "时钟同步", "Clock synchronised",
                       self.blocking(self._clock_outcome, "clock")),
            self.check("disk", "磁盘空间", "Disk space",
                       self.blocking(lambda: _disk(cfg), "disk")),
            self.check("store", "本地存储可写", "Store writable",
                       self.blocking(lambda: _store(cfg.gateway.data_dir), "store")),
        ]
        pid = running_pid(cfg.gateway.data_dir)
        jobs.append(self.check("instance", "网关服务已停止", "Gateway service stopped",
                               functools.partial(self._instance, pid)))
        if pid is None:
            jobs += [self._bus(bus) for bus in cfg.buses]
        else:
            jobs += [self._not_while_running(bus) for bus in cfg.buses]
        jobs += [self.check(f"destination.{d.name}", f"上传平台 {d.name}",
                            f"Destination {d.name} (TLS + MQTT)",
                            functools.partial(self._destination, d))
                 for d in cfg.destinations]
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(_as_coroutine(job), name=f"kemon.selftest[{i}]")
                     for i, job in enumerate(jobs)]
        out: list[CheckResult] = []
        for task in tasks:
            done = task.result()
            out.extend(done if isinstance(done, list) else [done])
        return out


async def _as_coroutine(job: Awaitable[Any]) -> Any:
    return await job


async def run_selftest(cfg: GatewayConfig, *, deadline: float = DEFAULT_TIMEOUT,
                       clock: ClockProbe = kernel_clock,
                       driver_factory: Callable[[BusConfig], Driver] = open_driver,
                       ) -> SelftestReport:
    """Run every check of ``cfg`` (each within ``deadline`` seconds) and return the report.
    ``clock`` and ``driver_factory`` are seams for tests."""
    started = time.time()
    checks = await _Selftest(cfg, deadline, clock, driver_factory).run()
    return SelftestReport(gateway=cfg.gateway.id, unit=cfg.gateway.unit, config=str(cfg.source),
                          host=socket.gethostname(), version=_version(), started=started,
                          finished=time.time(), checks=tuple(checks))


# --- the record on disk -------------------------------------------------------------------

def report_paths(report: SelftestReport, directory: Path) -> tuple[Path, Path]:
    """``selftest-<gateway>-<UTC stamp>.json`` and ``.html`` in ``directory``."""
    stamp = datetime.fromtimestamp(report.started, UTC).strftime("%Y%m%dT%H%M%SZ")
    stem = directory / f"selftest-{report.gateway}-{stamp}"
    return stem.with_suffix(".json"), stem.with_suffix(".html")


def write_reports(report: SelftestReport, directory: Path) -> tuple[Path, Path]:
    """Write the JSON and HTML reports into ``directory`` (created if missing), each through a
    temporary file and a rename. Raises OSError."""
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = report_paths(report, directory)
    write_atomically(json_path, render_json(report).encode("utf-8"), 0o644)
    write_atomically(html_path, render_html(report).encode("utf-8"), 0o644)
    return json_path, html_path
