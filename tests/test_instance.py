"""One `kemon gateway run` per data directory: a second one is refused in one line (exit 1)
while the first runs, and a gateway killed with SIGKILL leaves no stale lock behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from gateway._instance import InstanceLock, running_pid

from .conftest import ROOT, UNIT, kemon_cmd, run_kemon


def _config(tmp_path: Path) -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nid = "GWI"\nunit = "{UNIT}"\ndata_dir = "data"\n'
                   "require_time_sync = false\n", encoding="utf-8")
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(kemon_cmd("gateway", "run", "-c", str(cfg)), cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait_running(data: Path, proc: subprocess.Popen[bytes], log: Path) -> int:
    deadline = time.monotonic() + 30
    while (pid := running_pid(data)) is None:
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    return pid


def test_a_second_gateway_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    cfg, data = _config(tmp_path), tmp_path / "data"
    assert running_pid(data) is None
    first = _start(cfg, tmp_path / "first.log")
    try:
        assert _wait_running(data, first, tmp_path / "first.log") == first.pid
        second = run_kemon("gateway", "run", "-c", str(cfg), timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"error: a gateway (pid {first.pid}) is already running on {data}; stop it first "
            "(systemctl stop kemon-gateway)"]
        # the read-only commands take no lock
        assert run_kemon("gateway", "check", "-c", str(cfg)).returncode == 0
        first.kill()                                 # kill -9: the kernel drops the lock
        first.wait(10)
        assert running_pid(data) is None
        third = _start(cfg, tmp_path / "third.log")
        try:
            assert _wait_running(data, third, tmp_path / "third.log") == third.pid
            third.send_signal(signal.SIGTERM)
            assert third.wait(15) == 0
        finally:
            if third.poll() is None:
                third.kill()
                third.wait(10)
        assert running_pid(data) is None             # released on a clean stop
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)


def test_the_lock_in_one_process(tmp_path: Path) -> None:
    with InstanceLock(tmp_path) as lock:
        assert running_pid(tmp_path) == os.getpid()
        (tmp_path / "gateway.pid").write_text("garbage\n")  # a pid we cannot read: still held
        assert running_pid(tmp_path) == 0
        lock.release()
        assert running_pid(tmp_path) is None
        assert not (tmp_path / "gateway.pid").exists()
    (tmp_path / "gateway.pid").write_text("4242\n")          # a stale pid file: still free
    assert running_pid(tmp_path) is None
