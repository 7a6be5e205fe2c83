"""One running gateway per data directory.

Two ``kemon gateway run`` on one configuration would poll every RS-485 line twice (two masters
garble each other's frames) and seal batches from one store in two processes. ``run`` therefore
holds an exclusive ``flock(2)`` on the data directory itself for as long as it runs (a
directory can be locked on a full disk, where no lock file could be written), and writes its
pid to ``<data_dir>/gateway.pid`` when it can, for the message a second one prints. The kernel
drops the lock when the process ends, however it ends (kill -9 included), so a lock is never
stale. The read-only
commands (``readings``, ``backlog``, ``check``) take no lock; ``selftest`` asks
:func:`running_pid` and leaves the buses alone while a gateway runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

__all__ = ["AlreadyRunning", "InstanceLock", "running_pid"]

PID_NAME = "gateway.pid"
_RETRY_S = 1.0      # a selftest's probe holds a shared lock for microseconds: wait it out


class AlreadyRunning(OSError):
    """Another process holds the data directory's gateway lock."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"a gateway ({who}) is already running on {data_dir}; stop it first "
                         "(systemctl stop kemon-gateway)")
        self.pid = pid


def _pid_of(data_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((data_dir / PID_NAME).read_text(encoding="ascii").strip() or 0) or None
    return None


def _open_dir(data_dir: Path) -> int:
    return os.open(data_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


class InstanceLock:
    """Held by ``kemon gateway run`` on its data directory (a context manager)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = _open_dir(self.data_dir)
        deadline = time.monotonic() + _RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise AlreadyRunning(self.data_dir, _pid_of(self.data_dir)) from None
                time.sleep(0.05)
        self._fd = fd
        pid_file = self.data_dir / PID_NAME
        try:
            pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")
        except OSError:                  # a full disk: no pid to show, and none stale
            with contextlib.suppress(OSError):
                pid_file.unlink()

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                (self.data_dir / PID_NAME).unlink()
            os.close(self._fd)           # closing drops the lock
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def running_pid(data_dir: Path) -> int | None:
    """The pid of the gateway running on ``data_dir`` (0 when its pid cannot be read), or None
    when none is."""
    try:
        fd = _open_dir(data_dir)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _pid_of(data_dir) or 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
