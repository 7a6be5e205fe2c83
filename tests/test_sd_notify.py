"""`kemon gateway run` under systemd's notification protocol (sd_notify(3)): READY once it
polls, WATCHDOG pings from its event loop while it runs, STOPPING on SIGTERM — received on a
real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from protocol._sd_notify import notify, watchdog_seconds

from .conftest import ROOT, UNIT, kemon_cmd


def test_outside_systemd_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert notify("READY=1") is False
    assert watchdog_seconds() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert watchdog_seconds() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", "1")                  # another process's watchdog
    assert watchdog_seconds() is None


def test_gateway_reports_ready_feeds_the_watchdog_and_says_stopping(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f'[gateway]\nid = "GW0001"\nunit = "{UNIT}"\ndata_dir = "data"\n'
                      "require_time_sync = false\n", encoding="utf-8")
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(0.5)
        env = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "400000"}
        env.pop("WATCHDOG_PID", None)
        with (tmp_path / "gw.log").open("wb") as log:
            proc = subprocess.Popen(kemon_cmd("gateway", "run", "-c", str(config)), cwd=ROOT,
                                    env=env, stdout=log, stderr=log)
        try:
            got: list[str] = []
            deadline = time.monotonic() + 30
            while got.count("WATCHDOG=1") < 4:
                assert time.monotonic() < deadline, (got, (tmp_path / "gw.log").read_text())
                try:
                    got.extend(sock.recv(4096).decode().splitlines())
                except TimeoutError:
                    pass
            assert got[0] == "READY=1"              # ready first, then the pings
            assert any(line.startswith("STATUS=polling 0 meters") for line in got)
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            while "STOPPING=1" not in got:
                assert time.monotonic() < deadline, got
                try:
                    got.extend(sock.recv(4096).decode().splitlines())
                except TimeoutError:
                    pass
            assert proc.wait(15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
