"""``kemon demo``: simulated meters and a gateway, run as a user would run them.

Writes the embedded demo configuration (``demo.toml``) with free ports into a directory, starts
``kemon sim`` and ``kemon gateway run`` as child processes, and prints readings as the gateway
stores them, read through the store's read-only path like ``kemon gateway readings``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import click

from protocol import Period, to_rfc3339

__all__ = ["demo_command", "write_demo_config"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_demo_config(directory: Path) -> Path:
    """Write the demo configuration, with free TCP ports, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (resources.files("gateway.sim") / "demo.toml").read_text(encoding="utf-8")
    text = (text.replace("{modbus_port}", str(_free_port()))
                .replace("{cjt188_port}", str(_free_port()))
                .replace("{dir}", str(directory.resolve())))
    path = directory / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


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


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise click.ClickException(f"a demo process stopped early; see {log}")
        time.sleep(0.1)
    raise click.ClickException(f"timed out waiting for {text!r}; see {log}")


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
    """Run simulated meters (Modbus TCP and RTU, DL/T 645, CJ/T 188) and a gateway, and show
    the readings arriving in its store; then a time-lapse of consumption.

    \b
    Examples:
      kemon demo
      kemon demo --dir /tmp/kemon-demo --duration 0 --no-time-lapse
    """
    from gateway._store import Store

    config = write_demo_config(directory)
    counts: dict[Period, int] = {}
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    click.echo(f"demo: configuration {config}")
    sim_log, gw_log = logs / "sim.log", logs / "gateway.log"
    sim = _start(["sim", "-c", str(config), "--make-ports", "--fault", "spare=silent"], sim_log)
    gateway: subprocess.Popen[bytes] | None = None
    interrupted = False
    try:
        _wait_for(sim_log, "sim: ready", sim, 20)
        click.echo(f"demo: simulated meters ready (log {sim_log})")
        gateway = _start(["gateway", "run", "-c", str(config)], gw_log)
        click.echo(f"demo: gateway running (log {gw_log}); readings as they are stored:\n")
        store_path = directory / "data" / "store.db"
        seen = 0
        shown = _energy_points(config)
        started = time.monotonic()
        while duration == 0 or time.monotonic() - started < duration:
            time.sleep(1.0)
            if gateway.poll() is not None:
                raise click.ClickException(f"the gateway stopped; see {gw_log}")
            if not store_path.exists():
                continue
            with contextlib.closing(Store.open_readonly(store_path)) as store:
                while rows := store.after(seen, 1000):
                    seen = rows[-1][0]
                    for _, r in rows:
                        counts[r.period] = counts.get(r.period, 0) + 1
                        if r.period is Period.INSTANT and r.point not in shown:
                            continue
                        click.echo(f"  {to_rfc3339(r.ts)}  {r.point:<24} {r.period!s:<8} "
                                   f"{r.value:>14.3f}  {r.quality}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if gateway is not None:
            code = _stop(gateway)
            click.echo(f"\ndemo: gateway stopped (exit {code})")
        _stop(sim)
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
    click.echo("\nTry:\n"
               f"  {cmd} gateway readings -c {rel} --period instant --limit 5\n"
               f"  {cmd} gateway meters -c {rel}\n"
               f"  {cmd} demo --duration 0     (runs until Ctrl-C; 15-minute "
               "consumption appears at each quarter hour)")
