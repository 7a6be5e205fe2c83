"""Faults around the gateway's loop, in process with a real Modbus TCP simulator: a full disk
(a real tmpfs filled to the brim, then enlarged) and a clock that boots in 1970 and is then set
by NTP."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway._config import load_config
from gateway._runner import Gateway
from gateway._store import Store, StoreFullError
from gateway.sim._modbus_sim import serve_modbus_tcp
from gateway.sim._values import SimMeter
from protocol import Period, Quality, Reading

from .conftest import UNIT

POINT = "incomer.import_kwh"


def write_config(tmp_path: Path, port: int, data_dir: Path, *, sync: bool) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f"""
[gateway]
id = "GWF"
unit = "{UNIT}"
data_dir = "{data_dir}"
require_time_sync = {"true" if sync else "false"}

[store]
disk_budget_mb = 1024

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {port}
timeout = 0.3

[[meter]]
name = "incomer"
bus = "lan"
address = 1
profile = "sdm630"
interval = 1
""", encoding="utf-8")
    return path


async def run_site(tmp_path: Path, data_dir: Path, script: Callable[[Gateway], object], *,
                   sync: bool = False, wall: Callable[[], float] = time.time,
                   clock_check: Callable[[], bool] = lambda: True) -> None:
    """Start a simulator and a gateway, run the async ``script(gateway)``, stop both."""
    probe = load_config(write_config(tmp_path, 1, data_dir, sync=sync))
    ready, bound = asyncio.Event(), []
    sim = asyncio.create_task(serve_modbus_tcp(
        [SimMeter("1", probe.meters[0].points)], port=0, ready=ready, bound=bound))
    await ready.wait()
    cfg = load_config(write_config(tmp_path, bound[0], data_dir, sync=sync))
    gw = Gateway(cfg, wall=wall, clock_check=clock_check)
    stop = asyncio.Event()
    runner = asyncio.create_task(gw.run(stop))
    try:
        await script(gw)  # type: ignore[misc]
        assert not runner.done(), runner
        stop.set()
        await asyncio.wait_for(runner, 15)
    finally:
        for task in (sim, runner):
            task.cancel()
        await asyncio.gather(sim, runner, return_exceptions=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 3 MiB file system (tmpfs; the tests run as root, as CI does)."""
    assert os.geteuid() == 0, "this test mounts a tmpfs and needs root (make test runs as root)"
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill_to_the_brim(path: Path) -> int:
    n = 0
    now = int(time.time() * 1000)          # recent: pruning by age must not make room
    with Store(path) as store:
        try:
            while True:
                store.append_cycle([Reading(f"filler.{i}", Period.INSTANT, now + n * 1000, 1.0)
                                    for i in range(200)])
                n += 1
        except StoreFullError:
            pass
    return n


@pytest.mark.slow
def test_full_disk_holds_readings_and_stores_them_when_room_returns(
        tmp_path: Path, small_disk: Path) -> None:
    store_path = small_disk / "store.db"
    assert fill_to_the_brim(store_path) > 10
    seen_error: list[str] = []

    async def script(gw: Gateway) -> None:
        deadline = time.monotonic() + 10
        while gw.store_error is None:
            assert time.monotonic() < deadline, "the gateway never met the full disk"
            await asyncio.sleep(0.1)
        seen_error.append(str(gw.store_error))
        await asyncio.sleep(3)                     # cycles keep coming while the disk is full
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,size=64m",
                                                 str(small_disk)], check=True)
        deadline = time.monotonic() + 10
        while gw.store_error is not None:
            assert time.monotonic() < deadline, "the gateway did not recover"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)

    started = time.time()
    asyncio.run(run_site(tmp_path, small_disk, script))
    assert "full" in seen_error[0]
    with Store.open_readonly(store_path) as store:
        ticks = sorted(r.ts // 1000 for r in store.query(point=POINT, period=Period.INSTANT))
    assert ticks, "nothing of the gateway's was stored"
    # every second from the first to the last stored reading is there: nothing was lost
    assert ticks == list(range(ticks[0], ticks[-1] + 1))
    assert ticks[0] <= started + 2 and len(ticks) >= 4     # the full-disk seconds included


@pytest.mark.slow
def test_clock_booting_in_1970_then_set_by_ntp(tmp_path: Path) -> None:
    offset = [1_000.0 - time.time()]            # the clock starts at 1970-01-01T00:16:40Z

    def wall() -> float:
        return time.time() + offset[0]

    async def script(gw: Gateway) -> None:
        await asyncio.sleep(3.2)
        offset[0] = 0.0                          # NTP steps the clock to the real time
        await asyncio.sleep(3.2)

    asyncio.run(run_site(tmp_path, tmp_path / "data", script, sync=True, wall=wall,
                         clock_check=lambda: wall() > 1_577_836_800))
    with Store.open_readonly(tmp_path / "data" / "store.db") as store:
        readings = list(store.query(point=POINT))
    early = [r for r in readings if r.ts < 1_577_836_800_000]
    late = [r for r in readings if r.ts >= 1_577_836_800_000]
    assert len(early) >= 2 and len(late) >= 2
    assert {r.quality for r in early} == {Quality.CLOCK_UNSYNCED}
    assert {r.period for r in early} == {Period.INSTANT}
    assert all(r.quality in (Quality.GOOD, Quality.LATE) for r in late)
    assert sum(r.quality == Quality.GOOD for r in late) >= 2
    assert all(r.ts >= (time.time() - 60) * 1000 for r in late)
