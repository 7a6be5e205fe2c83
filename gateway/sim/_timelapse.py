"""A time-lapse of a site: a gateway and simulated meters on a fast shared clock, so that
quarter-hours and hours of consumption appear within seconds. Used by ``kemon demo``.

The gateway and the simulator are the real ones (Modbus TCP on loopback, the real store); only
the wall clock they both read is virtual (``VirtualClock``): it jumps from one wake-up to the
next, and stands still while a poll is on the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from protocol import CST, Period, from_ms, to_tce

from .._config import load_config
from .._model import GatewayConfig
from .._runner import Gateway
from .._store import Store
from ._modbus_sim import serve_modbus_tcp
from ._values import SimMeter
from ._virtual_clock import VirtualClock

__all__ = ["run_time_lapse"]

_SITE = """\
[gateway]
id = "DEMO-TL"
unit = "91320100MA1ABCDE0C"
data_dir = "{data_dir}"
require_time_sync = false

[[bus]]                 # two TCP meters, each its own connection: polled in parallel
name = "lan-a"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.5

[[bus]]
name = "lan-b"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.5

[[meter]]
name = "incomer"
bus = "lan-a"
address = 1
profile = "sdm630"
interval = 60

[[meter]]
name = "chiller"
bus = "lan-b"
address = 2
profile = "dtsu666"
interval = 60
"""


def _write_site(path: Path, data_dir: Path, port: int) -> GatewayConfig:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_SITE.format(data_dir=data_dir, port=port), encoding="utf-8")
    return load_config(path)


async def run_time_lapse(directory: Path, *, hours: float = 1.25,
                         echo: Callable[[str], None] = print) -> Path:
    """Run the time-lapse site for ``hours`` of simulated time; print each interval reading
    with its standard-coal equivalent as it is stored. Returns the store's path."""
    data_dir = (directory / "data").resolve()   # a relative one would be read from gateway.toml's
                                                # folder, not from here
    probe = directory / "gateway.toml"
    meters = _write_site(probe, data_dir, 1).meters
    ready, bound = asyncio.Event(), list[int]()
    now = datetime.now(CST).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=2, seconds=30)
    clock = VirtualClock(start.timestamp())
    end = start.timestamp() + hours * 3600
    pacer = asyncio.create_task(clock.run(until=end), name="kemon.demo.clock")
    sim = asyncio.create_task(serve_modbus_tcp([SimMeter(m.address, m.points) for m in meters],
                                               port=0, ready=ready, bound=bound, clock=clock),
                              name="kemon.demo.sim")
    await ready.wait()
    cfg = _write_site(probe, data_dir, bound[0])
    stop = asyncio.Event()
    runner = asyncio.create_task(Gateway(cfg, wall=clock, sleep=clock.sleep).run(stop),
                                 name="kemon.demo.gateway")
    store_path = cfg.gateway.data_dir / "store.db"
    units = {p.code: (p.unit, p.energy) for m in cfg.meters for p in m.points}
    seen = 0

    def show() -> None:
        nonlocal seen
        if not store_path.exists():
            return
        with Store.open_readonly(store_path) as store:
            while rows := store.after(seen, 1000):
                seen = rows[-1][0]
                for _, r in rows:
                    if r.period is Period.INSTANT or not r.point.endswith("import_kwh"):
                        continue
                    unit, energy = units[r.point]
                    tce = to_tce(energy, r.value, cfg.energy) if energy else 0.0
                    echo(f"  {from_ms(r.ts):%Y-%m-%d %H:%M} {r.period!s:<6} {r.point:<20} "
                         f"{r.value:10.3f} {unit:<4} = {tce:8.5f} tce  {r.quality}")

    try:
        while not pacer.done() and not runner.done():
            await asyncio.sleep(0.25)
            show()
        stop.set()
        await asyncio.wait_for(runner, 15)
        show()
    finally:
        for task in (sim, runner, pacer):
            task.cancel()
        await asyncio.gather(sim, runner, pacer, return_exceptions=True)
    return store_path
