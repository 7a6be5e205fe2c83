"""The watchdog of kemon-gateway.service, shown working: `kemon gateway run` feeds it from its
event loop, so a loop that cannot run — blocked in SQLite behind another process's write lock,
or the whole process frozen — stops the pings, the service manager aborts the gateway and
starts it again, and once the cause is gone it runs on, storing readings.

The manager is tests/watchdog.py (systemd cannot be PID 1 here), following systemd.service(5)
for Type=notify, WatchdogSec and Restart=always."""

from __future__ import annotations

import contextlib
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway._store import Store, StoreError

from .conftest import ROOT, UNIT, kemon_cmd
from .test_gateway_process import Proc, _free_port, _wait_text
from .watchdog import Supervisor

WATCHDOG_S = 1.5


@pytest.fixture
def meter_site(tmp_path: Path) -> Iterator[Path]:
    """One Modbus TCP meter on `kemon sim`, polled every second."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "GWW"\nunit = "{UNIT}"\ndata_dir = "data"\n'
                   "require_time_sync = false\n\n"
                   f'[[bus]]\nname = "lan"\nkind = "modbus-tcp"\nhost = "127.0.0.1"\n'
                   f"port = {_free_port()}\ntimeout = 0.3\n\n"
                   '[[meter]]\nname = "incomer"\nbus = "lan"\naddress = 1\nprofile = "sdm630"\n'
                   "interval = 1\n", encoding="utf-8")
    sim = Proc(tmp_path / "sim.log", "sim", "-c", str(cfg))
    try:
        _wait_text(sim.log, "sim: ready", 20)
        yield cfg
    finally:
        sim.stop()


def _newest_ts(store: Path) -> int:
    with contextlib.suppress(StoreError), Store.open_readonly(store) as s:
        rows = s.after(0, 1_000_000)
        return max((r.ts for _, r in rows), default=0)
    return 0


def _wait_readings_after(store: Path, since_ms: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _newest_ts(store) < since_ms:
        assert time.monotonic() < deadline, f"no reading after {since_ms} in {timeout} s"
        time.sleep(0.2)


def _supervised(cfg: Path, tmp_path: Path) -> Supervisor:
    return Supervisor(kemon_cmd("gateway", "run", "-c", str(cfg)), workdir=tmp_path,
                      watchdog_s=WATCHDOG_S, cwd=ROOT)


def test_a_loop_blocked_in_the_store_is_restarted(meter_site: Path, tmp_path: Path) -> None:
    store = tmp_path / "data" / "store.db"
    with _supervised(meter_site, tmp_path) as sup:
        sup.wait_for("ready", 30)
        _wait_readings_after(store, 1, 20)
        time.sleep(3 * WATCHDOG_S)
        assert sup.starts == 1 and "watchdog timeout: SIGABRT" not in sup.events, sup.events
        assert sup.pings >= 3                     # fed at half the interval while healthy

        # a technician's sqlite3 shell left in a write transaction: the gateway's next store
        # write waits for SQLite's busy timeout (5 s) on the event loop, longer than WatchdogSec
        holder = sqlite3.connect(store, timeout=10, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            sup.wait_for("watchdog timeout: SIGABRT", 30)
            sup.wait_for(f"exited {-signal.SIGABRT}", 10)     # killed by the abort
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        released = int(time.time() * 1000)

        # Restart=always: a new gateway starts, and once the lock is gone it stores again
        deadline = time.monotonic() + 40
        while sup.events[-1] != "ready" or sup.starts < 2:
            assert time.monotonic() < deadline, sup.events
            time.sleep(0.1)
        _wait_readings_after(store, released, 30)
        timeouts = sup.events.count("watchdog timeout: SIGABRT")
        time.sleep(3 * WATCHDOG_S)
        assert sup.events.count("watchdog timeout: SIGABRT") == timeouts, sup.events


def test_a_frozen_gateway_is_killed_and_started_again(meter_site: Path, tmp_path: Path) -> None:
    store = tmp_path / "data" / "store.db"
    with _supervised(meter_site, tmp_path) as sup:
        sup.wait_for("ready", 30)
        assert sup.proc is not None
        frozen = sup.proc
        frozen.send_signal(signal.SIGSTOP)       # a hung process: no signal handler runs
        sup.wait_for("SIGKILL after the abort grace", 30)
        assert frozen.poll() == -signal.SIGKILL
        deadline = time.monotonic() + 30
        while sup.starts < 2 or sup.events[-1] != "ready":
            assert time.monotonic() < deadline, sup.events
            time.sleep(0.1)
        restarted = int(time.time() * 1000)
        _wait_readings_after(store, restarted, 30)
