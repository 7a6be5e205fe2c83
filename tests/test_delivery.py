"""Delivery end to end: a gateway (in process, real Modbus simulator, real store) reporting to
real Mosquitto brokers over mutual TLS, and a collector-like subscriber that verifies every
batch's signature and chain. Nothing may be lost; duplicates on the wire may carry the same seq.

The readings are produced on a virtual clock (fast, exact grid times); delivery runs on the real
clock, as it does in the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from gateway._config import load_config
from gateway._runner import Gateway
from gateway._store import Store
from gateway.sim._modbus_sim import serve_modbus_tcp
from gateway.sim._values import SimMeter
from gateway.sim._virtual_clock import VirtualClock
from protocol import CST, Batch, unseal

from .brokers import Broker, ClientFiles, MqttClient, Pki
from .conftest import UNIT

GW = "GWD1"
DATA = f"kemon/v1/{UNIT}/{GW}/up/data"


def site_config(tmp_path: Path, sim_port: int, ident: ClientFiles,
                destinations: dict[str, Broker], **dest_options: object) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in dest_options.items())
    dests = "".join(f"""
[[destination]]
name = "{name}"
url = "{b.url}"
ca_file = "{ident.ca_path}"
cert_file = "{ident.cert_path}"
key_file = "{ident.key_path}"
keepalive = 5
{extra}""" for name, b in destinations.items())
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
id = "{GW}"
unit = "{UNIT}"
data_dir = "{tmp_path / 'data'}"
require_time_sync = false

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {sim_port}
timeout = 0.5

[[meter]]
name = "incomer"
bus = "lan"
address = 1
profile = "sdm630"
interval = 60
{dests}""", encoding="utf-8")
    return path


@dataclass
class Collector:
    """A persistent-session subscriber that verifies and keeps every batch it receives."""

    broker: Broker
    files: ClientFiles
    public_key: object
    client_id: str = field(default_factory=lambda: f"collector-{time.monotonic_ns()}")
    batches: dict[int, Batch] = field(default_factory=dict)
    received: int = 0
    client: MqttClient | None = None

    def connect(self) -> None:
        self.client = MqttClient.connect(self.broker, self.files, self.client_id,
                                         clean_start=False, session_expiry=3600)
        self.client.subscribe(DATA, qos=1)

    def drain(self, until_seq: int, timeout: float) -> None:
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while not all(s in self.batches for s in range(1, until_seq + 1)):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [s for s in range(1, until_seq + 1) if s not in self.batches]
                raise AssertionError(f"{len(missing)} batches missing, first {missing[:5]}")
            with contextlib.suppress(queue.Empty):
                self._keep(self.client.expect(timeout=min(left, 0.5)).payload)

    def _keep(self, payload: bytes) -> None:
        batch = unseal(payload, self.public_key)  # type: ignore[arg-type]
        self.received += 1
        if batch.seq in self.batches:           # a duplicate must be the same batch
            assert self.batches[batch.seq] == batch
        self.batches[batch.seq] = batch

    def close(self) -> None:
        """Disconnect (the session stays on the broker), keeping what has arrived."""
        if self.client is not None:
            self.client.close()
            while True:
                try:
                    self._keep(self.client.messages.get_nowait().payload)
                except queue.Empty:
                    break
            self.client = None


class Site:
    """Simulator + gateway in this process; readings on a virtual clock."""

    def __init__(self, tmp_path: Path, pki: Pki, destinations: dict[str, Broker],
                 **dest_options: object) -> None:
        self.tmp_path = tmp_path
        self.ident = pki.gateway(UNIT, GW)
        self.destinations = destinations
        self.dest_options = dest_options
        self.public_key = x509.load_pem_x509_certificate(
            self.ident.cert_path.read_bytes()).public_key()
        self.gateway: Gateway | None = None

    async def run(self, hours: float, script: object = None,
                  delivered: tuple[str, ...] = (), timeout: float = 30) -> Gateway:
        """Run ``hours`` of readings, then keep delivering until each of ``delivered`` has
        acknowledged everything (or ``timeout``), then stop the gateway."""
        start = datetime(2026, 11, 27, 7, 59, 30, tzinfo=CST).timestamp()
        clock = VirtualClock(start)
        probe = load_config(site_config(self.tmp_path, 1, self.ident, self.destinations,
                                        **self.dest_options))
        ready, bound = asyncio.Event(), list[int]()
        sim = asyncio.create_task(serve_modbus_tcp(
            [SimMeter("1", probe.meters[0].points)], port=0, ready=ready, bound=bound,
            clock=clock))
        await ready.wait()
        cfg = load_config(site_config(self.tmp_path, bound[0], self.ident, self.destinations,
                                      **self.dest_options))
        gw = self.gateway = Gateway(cfg, wall=clock, sleep=clock.sleep)
        stop = asyncio.Event()
        runner = asyncio.create_task(gw.run(stop))
        pacer = asyncio.create_task(clock.run(until=start + hours * 3600))
        try:
            if script is not None:
                await script(gw)  # type: ignore[operator]
            await pacer
            for name in delivered:
                await wait_acked(gw, name, timeout)
            stop.set()
            await asyncio.wait_for(runner, 30)
        finally:
            for task in (sim, runner, pacer):
                task.cancel()
            await asyncio.gather(sim, runner, pacer, return_exceptions=True)
        return gw

    def stored(self) -> set[tuple[str, str, int, float, str]]:
        with Store.open_readonly(self.tmp_path / "data" / "store.db") as store:
            return {(r.point, str(r.period), r.ts, r.value, str(r.quality))
                    for r in store.query()}

    def state(self, key: str) -> object:
        with Store.open_readonly(self.tmp_path / "data" / "store.db") as store:
            return store.load_state(key)


def readings_of(batches: dict[int, Batch]) -> set[tuple[str, str, int, float, str]]:
    return {(r.point, str(r.period), r.ts, r.value, str(r.quality))
            for b in batches.values() for r in b.readings}


@pytest.fixture
def collector(broker: Broker, pki: Pki) -> Iterator[Collector]:
    c = Collector(broker, pki.collector(), None)
    c.connect()
    try:
        yield c
    finally:
        c.close()


async def wait_acked(gw: Gateway, name: str, timeout: float) -> None:
    assert gw.delivery is not None
    deadline = time.monotonic() + timeout
    while gw.delivery.outbox.acked_seq(name) < gw.delivery.outbox.last_seq():
        assert time.monotonic() < deadline, f"{name} still behind"
        await asyncio.sleep(0.1)


@pytest.mark.slow
def test_every_reading_arrives_through_a_broker_restart(tmp_path: Path, pki: Pki,
                                                        broker: Broker,
                                                        collector: Collector) -> None:
    site = Site(tmp_path, pki, {"province": broker})
    collector.public_key = site.public_key

    async def script(gw: Gateway) -> None:
        while gw.delivery is None:
            await asyncio.sleep(0.01)
        while gw.delivery.outbox.acked_seq("province") < 3:
            await asyncio.sleep(0.05)
        collector.close()                     # the collector waits out the outage too
        broker.stop()
        await asyncio.sleep(2.0)              # the gateway keeps reading and sealing
        broker.start()
        collector.connect()

    asyncio.run(site.run(6.0, script, delivered=("province",)))
    last = site.state("outbox.last")["seq"]    # type: ignore[index]
    assert site.state("cursor.province") == last
    collector.drain(last, timeout=20)
    assert sorted(collector.batches) == list(range(1, last + 1))
    assert readings_of(collector.batches) == site.stored()
    prev = collector.batches[1].prev
    assert prev == bytes(32)


@pytest.mark.slow
def test_a_dead_destination_never_delays_another_and_catches_up(
        tmp_path: Path, pki: Pki, broker: Broker, collector: Collector) -> None:
    national = Broker(pki, tmp_path / "national")       # not started: down from the beginning
    site = Site(tmp_path, pki, {"province": broker, "national": national})
    collector.public_key = site.public_key
    lags: list[float] = []

    async def script(gw: Gateway) -> None:
        while gw.delivery is None:
            await asyncio.sleep(0.01)
        outbox = gw.delivery.outbox
        # while national is down, province keeps up with the sealing
        for _ in range(20):
            sealed = outbox.last_seq()
            t0 = time.monotonic()
            while outbox.acked_seq("province") < sealed:
                await asyncio.sleep(0.02)
            lags.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)
        assert outbox.acked_seq("national") == 0
        national.start()

    try:
        asyncio.run(site.run(5.0, script, delivered=("province", "national"), timeout=60))
    finally:
        national.stop()
    last = site.state("outbox.last")["seq"]    # type: ignore[index]
    assert site.state("cursor.province") == site.state("cursor.national") == last
    assert max(lags) < 2.0, lags
    collector.drain(last, timeout=20)
    assert readings_of(collector.batches) == site.stored()


def _prefill(path: Path, days: int, points: int) -> int:
    """A week-long outage: readings the gateway stored while nothing could be sent."""
    t0 = int(datetime(2026, 11, 20, tzinfo=CST).timestamp() * 1000)
    n = 0
    with Store(path) as store:
        for minute in range(days * 1440):
            from protocol import Period, Reading

            store.append_cycle([Reading(f"old.p{i:02d}", Period.INSTANT, t0 + minute * 60_000,
                                        1000.0 + minute + i / 100) for i in range(points)])
            n += points
    return n


@pytest.mark.slow
def test_a_week_long_backlog_drains_in_order_within_the_rate_limit(
        tmp_path: Path, pki: Pki, broker: Broker, collector: Collector) -> None:
    count = _prefill(tmp_path / "data" / "store.db", days=7, points=20)   # 201,600 readings
    rate = 150.0
    site = Site(tmp_path, pki, {"province": broker}, rate_limit=rate, max_inflight=32)
    collector.public_key = site.public_key
    started = time.monotonic()
    asyncio.run(site.run(0.1, delivered=("province",), timeout=120))
    elapsed = time.monotonic() - started
    last = site.state("outbox.last")["seq"]    # type: ignore[index]
    assert last >= count // 200
    assert elapsed >= (last - 2 * rate) / rate, (elapsed, last)      # burst at most ~2 s
    collector.drain(last, timeout=30)
    order = [b.seq for b in collector.batches.values()]
    assert order == sorted(order)                     # first arrivals came in seq order
    old = {r for r in readings_of(collector.batches) if r[0].startswith("old.")}
    assert len(old) == count


@pytest.mark.slow
def test_kill_9_while_publishing_then_restart_loses_nothing(
        tmp_path: Path, pki: Pki, broker: Broker, collector: Collector) -> None:
    import json
    import signal
    import subprocess

    from .conftest import ROOT, kemon_cmd, run_kemon
    from .test_gateway_process import _free_port

    ident = pki.gateway(UNIT, GW)
    collector.public_key = x509.load_pem_x509_certificate(ident.cert_path.read_bytes()).public_key()
    cfg = site_config(tmp_path, _free_port(), ident, {"province": broker}, rate_limit=20)
    cfg.write_text(cfg.read_text().replace("interval = 60", "interval = 1"))
    count = _prefill(tmp_path / "data" / "store.db", days=1, points=20)      # 144 batches
    sim = subprocess.Popen(kemon_cmd("sim", "-c", str(cfg)), cwd=ROOT,
                           stderr=subprocess.DEVNULL)

    def backlog() -> dict:
        res = run_kemon("gateway", "backlog", "-c", str(cfg))
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout)["province"]

    def start() -> subprocess.Popen[bytes]:
        with (tmp_path / "gw.log").open("ab") as log:
            return subprocess.Popen(kemon_cmd("gateway", "run", "-c", str(cfg)), cwd=ROOT,
                                    stderr=log)

    gw = start()
    try:
        deadline = time.monotonic() + 30
        while backlog()["acked_seq"] < 30:                # well into the backlog, ~20 batches/s
            assert time.monotonic() < deadline and gw.poll() is None
            time.sleep(0.2)
        gw.send_signal(signal.SIGKILL)
        gw.wait(10)
        before = backlog()
        assert before["pending"] > 0 and before["connected"] is True   # as of the last cycle
        gw = start()
        deadline = time.monotonic() + 60
        while (state := backlog())["pending"] > 0 or state["acked_seq"] == before["acked_seq"]:
            assert time.monotonic() < deadline, state
            time.sleep(0.3)
        assert state["connected"] is True
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(15) == 0
    finally:
        for proc in (gw, sim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    last = backlog()["last_seq"]
    collector.drain(last, timeout=30)
    with Store.open_readonly(tmp_path / "data" / "store.db") as store:
        stored = {(r.point, str(r.period), r.ts, r.value, str(r.quality)) for r in store.query()}
    assert readings_of(collector.batches) == stored
    assert len([r for r in stored if r[0].startswith("old.")]) == count
    assert collector.received >= len(collector.batches)       # duplicates allowed, not losses


def test_check_verifies_the_gateway_identity(tmp_path: Path, pki: Pki, broker: Broker) -> None:
    from .conftest import run_kemon

    ident = pki.gateway(UNIT, GW)
    cfg = site_config(tmp_path, 1502, ident, {"province": broker})
    res = run_kemon("gateway", "check", "-c", str(cfg))
    assert res.returncode == 0, res.stderr
    other = pki.gateway(UNIT, "GWD2")
    cfg.write_text(cfg.read_text().replace(str(ident.key_path), str(other.key_path)))
    res = run_kemon("gateway", "check", "-c", str(cfg))
    assert res.returncode == 2
    assert "does not hold the public key" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
