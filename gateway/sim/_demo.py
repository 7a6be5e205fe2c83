"""``kemon demo``: a province, the national platform and a gateway, provisioned and run as their
users would run them.

Provisions, with the real ``kemon provision`` commands (``_demo_platform``), a province (CA,
Mosquitto broker with mutual TLS and the topic ACL, collector), a national platform with a CA of
its own that the province relays to, and a gateway identity; writes the embedded demo
configuration (``demo.toml``) with free ports; starts the brokers, both ``kemon collector run``,
``kemon sim``, the commissioning self-test and ``kemon gateway run`` as child processes; prints
readings as the gateway stores them (the store's read-only path, like ``kemon gateway
readings``) and what the collectors have verified and stored.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import click

from protocol import Period, to_rfc3339
from protocol._cli import BadInput

from ._demo_platform import (
    Platform,
    collector_totals,
    provision,
    run_kemon,
    start_broker,
    start_collector,
)

__all__ = ["demo_command", "write_demo_config"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_demo_config(directory: Path, destination: str | None = None) -> Path:
    """Write the demo configuration, with free TCP ports, into ``directory``; with
    ``destination`` (an ``mqtts://`` URL), the gateway reports there with the identity that
    ``kemon provision gateway`` wrote in ``directory/gateway-id``."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (resources.files("gateway.sim") / "demo.toml").read_text(encoding="utf-8")
    block = "" if destination is None else (
        "\n[[destination]]                    # the demo province: Mosquitto with mutual TLS\n"
        f'name = "province"\nurl = "{destination}"\n'
        'ca_file = "gateway-id/ca.pem"\ncert_file = "gateway-id/gateway.pem"\n'
        'key_file = "gateway-id/gateway.key"\n')
    text = (text.replace("{modbus_port}", str(_free_port()))
                .replace("{cjt188_port}", str(_free_port()))
                .replace("{dir}", str(directory.resolve()))
                .replace("{destination}", block))
    path = directory / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


MARKER = ".kemon-demo"


def _fresh(directory: Path) -> None:
    """Start from an empty demo directory: a new CA each run, so nothing of an earlier run's
    identities or stores can disagree with this one. Only a directory the demo made is wiped."""
    if directory.exists() and any(directory.iterdir()):
        if not (directory / MARKER).exists():
            raise BadInput(f"--dir {directory}: exists and was not made by 'kemon demo'; "
                           "give an empty or new directory")
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARKER).write_text("made by 'kemon demo'; it empties this directory at start\n",
                                    encoding="utf-8")


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "kemon", *args], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def _wait_until(ready: Callable[[], bool], what: str, proc: subprocess.Popen[bytes],
                log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc.poll() is not None:
            raise click.ClickException(f"a demo process stopped early; see {log}")
        time.sleep(0.1)
    raise click.ClickException(f"timed out waiting for {what}; see {log}")


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    _wait_until(lambda: log.exists() and text in log.read_text(errors="replace"), repr(text),
                proc, log, timeout)


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@click.command("demo")
@click.option("--dir", "directory", default="demo-data", show_default=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Where the demo writes its configuration, store and logs.")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds to run the live site; 0 runs until Ctrl-C.")
@click.option("--time-lapse/--no-time-lapse", "time_lapse", default=True, show_default=True,
              help="Then replay 75 minutes of a site on a virtual clock, to show 15-minute and "
                   "hourly consumption with its standard-coal equivalent.")
def demo_command(directory: Path, duration: float, time_lapse: bool) -> None:
    """Provision a province (CA, Mosquitto with mutual TLS, a collector), the national
    platform it relays to, and a gateway; run simulated meters (Modbus TCP and RTU, DL/T 645,
    CJ/T 188), the commissioning self-test and the gateway, and show readings arriving in the
    gateway's store and at both collectors; then a time-lapse of consumption.

    The demo directory is emptied at each start (only one that 'kemon demo' made).

    \b
    Examples:
      kemon demo
      kemon demo --dir /tmp/kemon-demo --duration 0 --no-time-lapse
    """
    _fresh(directory)
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    click.echo("demo: provisioning a province, the national platform and a gateway "
               "(docs/provisioning.md):")
    province, national = provision(directory / "platform", port=_free_port(),
                                   national_port=_free_port(), unit=DEMO_UNIT,
                                   gateway=DEMO_GATEWAY, gateway_dir=directory / "gateway-id",
                                   echo=click.echo)
    config = write_demo_config(directory, province.url)
    click.echo(f"demo: gateway configuration {config}")
    procs: list[subprocess.Popen[bytes]] = []
    counts: dict[Period, int] = {}
    gateway: subprocess.Popen[bytes] | None = None
    interrupted = False
    try:
        for level, name in ((national, "national"), (province, "province")):
            broker_log, collector_log = logs / f"{name}-broker.log", logs / f"{name}.log"
            procs.append(start_broker(level, broker_log))
            _wait_until(functools.partial(_listening, level.port), f"port {level.port}",
                        procs[-1], broker_log, 20)
            click.echo(f"demo: {name} broker (Mosquitto, mutual TLS, topic ACL) on {level.url} "
                       f"(log {broker_log})")
            procs.append(start_collector(level, collector_log))
            _wait_for(collector_log, "connected to", procs[-1], 30)
            click.echo(f"demo: {name} collector connected (log {collector_log})")
        sim_log, gw_log = logs / "sim.log", logs / "gateway.log"
        procs.append(_start(["sim", "-c", str(config), "--make-ports",
                             "--fault", "spare=silent"], sim_log))
        _wait_for(sim_log, "sim: ready", procs[-1], 20)
        click.echo(f"demo: simulated meters ready (log {sim_log})")
        click.echo("demo: the commissioning self-test a technician runs on site "
                   "(docs/selftest.md);\n      the meter 'spare' is silent on purpose, so it "
                   "fails:")
        code = run_kemon(click.echo, "gateway", "selftest", "-c", str(config), "--report-dir",
                         str(directory / "selftest"), check=False)
        click.echo(f"demo: self-test exit {code} (0 only when every check passes)")
        gateway = _start(["gateway", "run", "-c", str(config)], gw_log)
        click.echo(f"demo: gateway running (log {gw_log}); readings as they are stored, and "
                   "what the collectors have:\n")
        counts = _watch(directory / "data" / "store.db", _energy_points(config), gateway,
                        (province, national), duration, gw_log)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if gateway is not None:
            code = _stop(gateway)
            click.echo(f"\ndemo: gateway stopped (exit {code})")
        try:
            if not interrupted and gateway is not None:
                _settle(province, national)
                _collector_view(province, "province", "each verified (certificate, "
                                "signature, hash chain)")
                _collector_view(national, "national", "relayed unchanged by the province "
                                "and verified again (the gateway's own signatures)")
        finally:
            for proc in reversed(procs):
                _stop(proc)
    if interrupted:
        return
    _summary(directory, config, counts)
    if time_lapse:
        import asyncio

        from ._timelapse import run_time_lapse

        click.echo("\ndemo: time-lapse: 75 minutes of a two-meter site on a virtual clock; the "
                   "gateway turns counter\n      readings into 15-minute and hourly consumption "
                   "on the China Standard Time grid (GB/T 2589 factors):\n")
        lapse_store = asyncio.run(run_time_lapse(directory / "time-lapse", echo=click.echo))
        click.echo(f"\ndemo: time-lapse store {lapse_store}")


DEMO_UNIT, DEMO_GATEWAY = "91320100MA1ABCDE0C", "DEMO01"


def _watch(store_path: Path, shown: set[str], gateway: subprocess.Popen[bytes],
           levels: tuple[Platform, Platform], duration: float,
           gw_log: Path) -> dict[Period, int]:
    """Print the gateway's new readings each second, and the collectors' totals every five."""
    from gateway._store import Store

    counts: dict[Period, int] = {}
    seen, ticks = 0, 0
    last: tuple[tuple[int, int], ...] = ()
    started = time.monotonic()
    while duration == 0 or time.monotonic() - started < duration:
        time.sleep(1.0)
        ticks += 1
        if gateway.poll() is not None:
            raise click.ClickException(f"the gateway stopped; see {gw_log}")
        if store_path.exists():
            with contextlib.closing(Store.open_readonly(store_path)) as store:
                while rows := store.after(seen, 1000):
                    seen = rows[-1][0]
                    for _, r in rows:
                        counts[r.period] = counts.get(r.period, 0) + 1
                        if r.period is Period.INSTANT and r.point not in shown:
                            continue
                        click.echo(f"  {to_rfc3339(r.ts)}  {r.point:<24} {r.period!s:<8} "
                                   f"{r.value:>14.3f}  {r.quality}")
        if ticks % 5:
            continue
        totals = tuple(collector_totals(level) for level in levels)
        if totals != last:
            last = totals
            (p_readings, p_batches), (n_readings, n_batches) = totals
            click.echo(f"  -> province collector: {p_readings} readings in {p_batches} verified "
                       f"batches from {DEMO_UNIT}/{DEMO_GATEWAY}; national: {n_readings} in "
                       f"{n_batches}, relayed")
    return counts


def _settle(*levels: Platform) -> None:
    """Let the collectors store (and relay) what the brokers already hold before reading
    their view."""
    def now() -> tuple[tuple[int, int], ...]:
        return tuple(collector_totals(level) for level in levels)

    last, stable_since = now(), time.monotonic()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and time.monotonic() - stable_since < 2.0:
        time.sleep(0.25)
        if (current := now()) != last:
            last, stable_since = current, time.monotonic()


def _collector_view(level: Platform, name: str, how: str) -> None:
    readings, batches = collector_totals(level)
    click.echo(f"demo: the {name} collector stored {readings} readings in {batches} batches, "
               f"{how}; its status:")
    res = subprocess.run([sys.executable, "-m", "kemon", "collector", "status", "-c",
                          str(level.collector_config)], capture_output=True, text=True,
                         check=False)
    for line in (res.stdout + res.stderr).splitlines():
        click.echo(f"  {line}")


def _energy_points(config: Path) -> set[str]:
    """The counter points: the demo prints their instant readings, not every voltage."""
    from gateway._config import load_config

    return {p.code for m in load_config(config).meters for p in m.points if p.counter}


def _summary(directory: Path, config: Path, counts: dict[Period, int]) -> None:
    from gateway._store import Store

    store_path = directory / "data" / "store.db"
    if not store_path.exists():
        click.echo("demo: no store was written")
        return
    with contextlib.closing(Store.open_readonly(store_path)) as store:
        meters = store.load_state("meters") or {}
        total = store.count()
    click.echo(f"demo: {total} readings in the store; seen during the demo: "
               + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for bus, stats in sorted(meters.items()):
        for name, s in sorted(stats.items()):
            state = ("OFFLINE" if s.get("offline") else
                     "FAILING" if s.get("consecutive_failures") else "online")
            click.echo(f"  meter {name:<8} on {bus:<8} {state:<7} requests {s.get('requests')}, "
                       f"errors {s.get('errors')}, timeouts {s.get('timeouts')}, "
                       f"latency {s.get('last_latency_ms')} ms")
    rel = os.path.relpath(config)
    if rel.startswith(".."):
        rel = str(config.resolve())
    kemon = Path(sys.executable).parent / "kemon"
    cmd = os.path.relpath(kemon) if kemon.exists() else "kemon"
    if cmd.startswith(".."):
        cmd = str(kemon)
    collector = Path(rel).parent / "platform" / "collector" / "collector.toml"
    click.echo("\nTry:\n"
               f"  {cmd} gateway readings -c {rel} --period instant --limit 5\n"
               f"  {cmd} gateway meters -c {rel}\n"
               f"  {cmd} collector readings -c {collector} --limit 5\n"
               f"  {cmd} demo --duration 0     (runs until Ctrl-C; 15-minute "
               "consumption appears at each quarter hour)")
