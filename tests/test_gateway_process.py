"""`kemon gateway run` as a real process against `kemon sim` over real links: Modbus TCP on
loopback, Modbus RTU and DL/T 645 over socat pseudo-terminals. Clean SIGTERM stop, read-only
commands while it runs, a silent meter that does not stall its bus, and kill -9."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway._config import load_config
from gateway._store import Store, StoreError
from gateway.sim._values import point_value
from protocol import parse_time

from .conftest import ROOT, UNIT, kemon_cmd, run_kemon


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def site_config(tmp_path: Path) -> Path:
    text = f"""
[gateway]
id = "GWP"
unit = "{UNIT}"
data_dir = "data"
require_time_sync = false

[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
port = {_free_port()}
timeout = 0.3

[[bus]]
name = "rs485-1"
kind = "modbus-rtu"
port = "{tmp_path}/rs485-1"
timeout = 0.2

[[bus]]
name = "rs485-2"
kind = "dlt645"
port = "{tmp_path}/rs485-2"
timeout = 0.4

[[meter]]
name = "incomer"
bus = "lan"
address = 1
profile = "sdm630"
interval = 1

[[meter]]                 # first on its bus, never answers
name = "dead"
bus = "rs485-1"
address = 9
profile = "sdm630"
interval = 1

[[meter]]
name = "line"
bus = "rs485-1"
address = 3
profile = "dtsu666"
interval = 1

[[meter]]
name = "main645"
bus = "rs485-2"
address = "000000000001"
profile = "dlt645_3phase"
interval = 2
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _wait_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path}:\n{path.read_text(errors='replace')}")


class Proc:
    """A kemon child process with its output in a file; always reaped."""

    def __init__(self, log: Path, *args: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.p = subprocess.Popen(kemon_cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                      cwd=ROOT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.p.poll() is None:
            self.p.send_signal(sig)
        try:
            return self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Path, Proc]]:
    cfg = site_config(tmp_path)
    sim = Proc(tmp_path / "sim.log", "sim", "-c", str(cfg), "--make-ports", "--fault",
               "dead=silent")
    try:
        _wait_text(sim.log, "sim: ready", 20)
        yield cfg, sim
    finally:
        sim.stop()


def _store(cfg: Path) -> Path:
    return cfg.parent / "data" / "store.db"


def _count(cfg: Path) -> int:
    if not _store(cfg).exists():
        return 0
    try:
        with Store.open_readonly(_store(cfg)) as store:
            return store.count()
    except StoreError:          # the gateway is creating it this very moment
        return 0


def _wait_count(cfg: Path, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (c := _count(cfg)) >= n:
            return c
        time.sleep(0.1)
    raise AssertionError(f"fewer than {n} readings after {timeout} s")


def _wait_fresh(cfg: Path, points: tuple[str, ...], since_ms: int, timeout: float) -> None:
    """Wait until each of ``points`` has a reading stamped at or after ``since_ms``."""
    deadline = time.monotonic() + timeout
    missing = set(points)
    while time.monotonic() < deadline:
        with contextlib.suppress(StoreError), Store.open_readonly(_store(cfg)) as store:
            missing = {p for p in missing
                       if next(store.query(point=p, since_ms=since_ms, limit=1), None) is None}
        if not missing:
            return
        time.sleep(0.2)
    raise AssertionError(f"no reading of {sorted(missing)} after the restart in {timeout} s")


@pytest.mark.slow
def test_run_stores_readings_and_stops_cleanly(site: tuple[Path, Proc], tmp_path: Path) -> None:
    cfg, _ = site
    gw = Proc(tmp_path / "gw.log", "gateway", "run", "-c", str(cfg))
    try:
        _wait_count(cfg, 1, 15)
        time.sleep(6)
        # read-only commands while the gateway writes
        asked = time.time()
        res = run_kemon("gateway", "readings", "-c", str(cfg), "--point", "line.import_kwh",
                        "--period", "instant")
        assert res.returncode == 0, res.stderr
        rows = [json.loads(line) for line in res.stdout.splitlines()]
        meters = run_kemon("gateway", "meters", "-c", str(cfg))
        assert meters.returncode == 0, meters.stderr
    finally:
        code = gw.stop()
    assert code == 0, gw.output()
    assert "Traceback" not in gw.output()
    assert "stopped after" in gw.output()

    # the meter behind the silent one was read on (nearly) every 1-second tick, on time: from
    # its first reading to the query (slow starts under load do not count against it)
    ticks = asked - parse_time(rows[0]["ts"]) / 1000
    assert len(rows) >= ticks - 2, (len(rows), ticks)
    assert all(r["quality"] == "good" for r in rows[1:])
    point = next(p for m in load_config(cfg).meters for p in m.points
                 if p.code == "line.import_kwh")
    for r in rows:
        assert r["ts"].endswith("+08:00") and "." not in r["ts"]     # on the grid, CST
        ts = parse_time(r["ts"]) / 1000
        assert r["value"] == pytest.approx(point_value(point, ts), abs=0.05)

    stats = {m["meter"]: m for m in map(json.loads, meters.stdout.splitlines())}
    assert stats["dead"]["offline"] is True
    assert stats["dead"]["timeouts"] >= 3
    assert stats["line"]["offline"] is False and stats["line"]["errors"] == 0
    assert stats["incomer"]["last_good"] is not None
    assert stats["main645"]["requests"] > 0 and stats["main645"]["errors"] == 0

    with Store.open_readonly(_store(cfg)) as store:
        codes = {r.point for r in store.query()}
    assert {"incomer.import_kwh", "line.import_kwh", "main645.import_kwh"} <= codes
    assert not any(c.startswith("dead.") for c in codes)


@pytest.mark.slow
def test_kill_9_mid_cycle_keeps_every_committed_reading(site: tuple[Path, Proc],
                                                         tmp_path: Path) -> None:
    cfg, sim = site
    gw = Proc(tmp_path / "gw1.log", "gateway", "run", "-c", str(cfg))
    try:
        _wait_count(cfg, 20, 20)
        time.sleep(2.3)            # somewhere inside a cycle
        before = _count(cfg)
        gw.p.send_signal(signal.SIGKILL)
        gw.p.wait(timeout=10)
    finally:
        gw.stop()
    assert gw.p.returncode == -signal.SIGKILL

    conn = sqlite3.connect(f"file:{_store(cfg)}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    after_kill = _count(cfg)
    assert after_kill >= before

    # The gateway starts again on the same store and on the SAME pseudo-terminals, the
    # simulator still holding their other ends, and every bus goes on. (Reopening a pty that
    # the killed gateway had set to 2400 8E1 used to fail inside the C library; the DL/T 645
    # bus task died and the gateway hung, deaf to SIGTERM: tests/test_serial_open.py.)
    restarted_ms = int(time.time() * 1000)
    gw2 = Proc(tmp_path / "gw2.log", "gateway", "run", "-c", str(cfg))
    try:
        _wait_count(cfg, after_kill + 10, 20)
        _wait_fresh(cfg, ("line.import_kwh", "main645.import_kwh"), restarted_ms, 20)
    finally:
        code = gw2.stop()
    assert code == 0, gw2.output()
    assert "Traceback" not in gw2.output()
    assert sim.p.poll() is None, sim.output()      # the same simulator all along
    res = run_kemon("gateway", "readings", "-c", str(cfg))
    assert res.returncode == 0
    keys = [(r["point"], r["period"], r["ts"]) for r in map(json.loads, res.stdout.splitlines())]
    assert len(keys) == len(set(keys)) >= after_kill + 10


def test_run_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text("[gateway]\nid = 'x'\n", encoding="utf-8")
    res = run_kemon("gateway", "run", "-c", str(path))
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "gateway.unit: is missing" in res.stderr


def test_run_with_unwritable_data_dir_exits_1(tmp_path: Path) -> None:
    cfg = site_config(tmp_path)
    text = cfg.read_text().replace('data_dir = "data"', 'data_dir = "/proc/kemon-no"')
    cfg.write_text(text)
    res = run_kemon("gateway", "run", "-c", str(cfg), timeout=30)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert "/proc/kemon-no" in res.stderr


def test_readings_command_errors(tmp_path: Path) -> None:
    cfg = site_config(tmp_path)
    res = run_kemon("gateway", "readings", "-c", str(cfg))
    assert res.returncode == 1 and "no store" in res.stderr
    res = run_kemon("gateway", "readings", "-c", str(cfg), "--since", "yesterday")
    assert res.returncode == 2 and "--since" in res.stderr and "RFC 3339" in res.stderr
    res = run_kemon("gateway", "readings", "-c", str(cfg), "--period", "week")
    assert res.returncode == 2


def test_no_leftover_environment() -> None:
    # the tests above run kemon from this checkout; a stray KEMON_* setting would change them
    assert not [k for k in os.environ if k.startswith("KEMON_")]
