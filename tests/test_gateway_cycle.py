"""The gateway's poll loop in process, against a real Modbus TCP simulator on loopback, on a
virtual clock (gateway.sim's VirtualClock) that both read: half an hour of quarter-hour
boundaries passes in seconds and every poll lands on its tick, so the consumption the gateway
computes can be checked exactly against the simulator's known counter function. (Timing on a
real clock is tested by tests/test_gateway_process.py.)"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest

from gateway._config import load_config
from gateway._runner import Gateway
from gateway._store import Store
from gateway.sim._modbus_sim import serve_modbus_tcp
from gateway.sim._values import SimMeter, point_value
from gateway.sim._virtual_clock import VirtualClock
from protocol import CST, Period, Quality, to_ms

from .conftest import UNIT


def config_text(port: int, data_dir: Path, *, require_sync: bool = True) -> str:
    return f"""
[gateway]
id = "GWT"
unit = "{UNIT}"
data_dir = "{data_dir}"
require_time_sync = {"true" if require_sync else "false"}

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.2

[[meter]]
name = "incomer"
bus = "lan"
address = 1
profile = "sdm630"
interval = 60
"""


async def _run(tmp_path: Path, start: datetime, until: datetime, synced: bool) -> Path:
    clock = VirtualClock(start.timestamp())
    pacer = asyncio.create_task(clock.run(until=until.timestamp()))
    bound: list[int] = []
    ready = asyncio.Event()
    data_dir = tmp_path / "data"
    # the config is loaded first with a placeholder port, to build the simulated meters
    probe = tmp_path / "probe.toml"
    probe.write_text(config_text(1, data_dir), encoding="utf-8")
    meters = load_config(probe).meters
    sims = [SimMeter(meters[0].address, meters[0].points)]
    sim = asyncio.create_task(serve_modbus_tcp(sims, port=0, ready=ready, bound=bound,
                                               clock=clock))
    await ready.wait()
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(config_text(bound[0], data_dir), encoding="utf-8")
    cfg = load_config(cfg_path)
    stop = asyncio.Event()
    gw = Gateway(cfg, clock_check=lambda: synced, wall=clock, sleep=clock.sleep)
    runner = asyncio.create_task(gw.run(stop))
    try:
        while not pacer.done():
            await asyncio.sleep(0.05)
            if runner.done():
                runner.result()
        stop.set()
        await asyncio.wait_for(runner, 20)
    finally:
        for task in (sim, runner, pacer):
            task.cancel()
        await asyncio.gather(sim, runner, pacer, return_exceptions=True)
    return data_dir / "store.db"


@pytest.mark.slow
def test_quarter_hours_match_the_meter(tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 7, 58, 30, tzinfo=CST)
    until = datetime(2026, 11, 27, 9, 1, 10, tzinfo=CST)
    store_path = asyncio.run(_run(tmp_path, start, until, synced=True))
    cfg = load_config(tmp_path / "gateway.toml")
    energy = next(p for p in cfg.meters[0].points if p.key == "import_kwh")
    with Store.open_readonly(store_path) as store:
        instants = list(store.query(point=energy.code, period=Period.INSTANT))
        quarters = list(store.query(point=energy.code, period=Period.MIN15))
        hours = list(store.query(point=energy.code, period=Period.HOUR))
        meters = store.load_state("meters")

    # every minute from 07:59 to 09:01 polled on the grid, stamped with the grid time
    minutes = {r.ts for r in instants}
    expected = {to_ms(datetime(2026, 11, 27, 7, 59, tzinfo=CST)) + i * 60_000 for i in range(63)}
    assert expected <= minutes
    assert all(r.ts % 60_000 == 0 for r in instants)
    assert all(r.quality == Quality.GOOD for r in instants)
    for r in instants:
        assert r.value == pytest.approx(point_value(energy, r.ts / 1000), abs=0.05)

    # 15-minute consumption: counter at the next boundary minus counter at this one
    assert [r.ts for r in quarters] == [to_ms(datetime(2026, 11, 27, 8, m, tzinfo=CST))
                                        for m in (0, 15, 30, 45)]
    for r in quarters:
        b0, b1 = r.ts / 1000, r.ts / 1000 + 900
        assert r.quality == Quality.GOOD
        assert r.value == pytest.approx(point_value(energy, b1) - point_value(energy, b0),
                                        abs=0.05)
        assert r.value > 0
    # the hour from its own boundaries, equal to the sum of its quarters
    (hour,) = hours
    assert hour.ts == to_ms(datetime(2026, 11, 27, 8, 0, tzinfo=CST))
    assert hour.quality == Quality.GOOD
    assert hour.value == pytest.approx(sum(q.value for q in quarters), abs=1e-6)
    assert hour.value == pytest.approx(point_value(energy, hour.ts / 1000 + 3600)
                                       - point_value(energy, hour.ts / 1000), abs=0.05)
    assert meters["lan"]["incomer"]["offline"] is False
    assert meters["lan"]["incomer"]["errors"] == 0


@pytest.mark.slow
def test_unsynchronised_clock_stores_no_good_reading(tmp_path: Path) -> None:
    start = datetime(2026, 11, 27, 8, 13, 50, tzinfo=CST)
    until = datetime(2026, 11, 27, 8, 16, 10, tzinfo=CST)
    store_path = asyncio.run(_run(tmp_path, start, until, synced=False))
    with Store.open_readonly(store_path) as store:
        readings = list(store.query())
    assert readings, "the gateway stored nothing"
    assert {r.quality for r in readings} == {Quality.CLOCK_UNSYNCED}
    assert {r.period for r in readings} == {Period.INSTANT}   # no consumption from false times
