"""A stand-in for systemd's service manager, for the three settings of kemon-gateway.service the
tests must show working: ``Type=notify`` (``READY=1`` on ``$NOTIFY_SOCKET``), ``WatchdogSec``
(``WATCHDOG=1`` pings; without one for that long, systemd sends ``WatchdogSignal`` — SIGABRT —
and SIGKILL after a grace) and ``Restart=always`` (start again after ``RestartSec``).

systemd cannot run as PID 1 in the test container; this follows systemd.service(5) for those
settings and nothing else. The unit's own syntax is checked by systemd-analyze in
test_systemd_units.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType


class Supervisor:
    """Runs ``argv`` as a notify service with a watchdog and Restart=always."""

    def __init__(self, argv: Sequence[str], *, workdir: Path, watchdog_s: float,
                 restart_s: float = 0.3, abort_grace_s: float = 3.0,
                 cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.workdir = workdir
        self.watchdog_s = watchdog_s
        self.restart_s = restart_s
        self.abort_grace_s = abort_grace_s
        self.cwd = cwd
        self.starts = 0
        self.pings = 0
        self.events: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._address = workdir / "notify.sock"
        self._thread = threading.Thread(target=self._manage, daemon=True)

    def __enter__(self) -> Supervisor:
        self._sock.bind(str(self._address))
        self._sock.settimeout(0.05)
        self._spawn()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self._sock.close()

    @property
    def log(self) -> Path:
        return self.workdir / "service.log"

    def _spawn(self) -> None:
        env = {**os.environ, "NOTIFY_SOCKET": str(self._address),
               "WATCHDOG_USEC": str(int(self.watchdog_s * 1_000_000))}
        env.pop("WATCHDOG_PID", None)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT)
        with self._lock:
            self.proc = proc
            self.starts += 1
            self.events.append(f"started pid {proc.pid}")

    def _manage(self) -> None:
        ready, last_ping = False, time.monotonic()
        while not self._stop.is_set():
            try:
                message = self._sock.recv(4096).decode()
            except TimeoutError:
                message = ""
            for line in message.splitlines():
                if line == "READY=1":
                    ready, last_ping = True, time.monotonic()
                    self.events.append("ready")
                elif line == "WATCHDOG=1":
                    last_ping = time.monotonic()
                    self.pings += 1
            assert self.proc is not None
            if ready and time.monotonic() - last_ping > self.watchdog_s:
                self.events.append("watchdog timeout: SIGABRT")
                self._abort(self.proc)
            elif self.proc.poll() is not None:
                self.events.append(f"exited {self.proc.returncode}")
            else:
                continue
            if self._stop.wait(self.restart_s):            # Restart=always, RestartSec
                return
            ready, last_ping = False, time.monotonic()
            self._spawn()

    def _abort(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGABRT)
        try:
            code = proc.wait(self.abort_grace_s)
        except subprocess.TimeoutExpired:              # a stopped process ignores SIGABRT
            proc.kill()
            code = proc.wait(10)
            self.events.append("SIGKILL after the abort grace")
        self.events.append(f"exited {code}")

    def wait_for(self, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.events:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what!r} in {timeout} s: {self.events}\n"
                                     + self.log.read_text(errors="replace")[-3000:])
            time.sleep(0.05)
