"""Is the system clock synchronised? (DESIGN decision 6: no reading gets a false time.)

A Raspberry Pi has no real-time clock: it boots at the last saved time, or 1970, until NTP
answers. The kernel knows whether its clock is disciplined: ``adjtimex(2)`` returns
``TIME_ERROR`` (5) and sets ``STA_UNSYNC`` in ``status`` while it is not. We ask the kernel
directly (no subprocess in the poll loop); where adjtimex is unavailable we ask
``timedatectl show -p NTPSynchronized``. A clock before 2020 is never trusted.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import subprocess
import time
from dataclasses import dataclass

__all__ = ["EARLIEST_TRUSTED", "ClockState", "clock_state", "clock_synchronised"]

log = logging.getLogger(__name__)

_TIME_ERROR = 5           # adjtimex return value: clock not synchronised (linux/timex.h)
_STA_UNSYNC = 0x0040      # status bit: clock unsynchronised (linux/timex.h)
_STA_NANO = 0x2000        # status bit: ``offset`` in ns, not µs (linux/timex.h)
_EARLIEST_TRUSTED = 1_577_836_800.0   # 2020-01-01T00:00:00Z: no real clock is earlier
EARLIEST_TRUSTED = _EARLIEST_TRUSTED


class _Timex(ctypes.Structure):
    # struct timex from linux/timex.h (64-bit longs on both arm64 and x86_64; ``long`` follows
    # the platform on 32-bit Raspberry Pi OS too).
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11),
    ]


@dataclass(frozen=True, slots=True)
class ClockState:
    """What the kernel says of the system clock. ``synchronised`` None: nobody could tell.
    Errors and offset in seconds, where the source gives them."""

    now: float
    synchronised: bool | None
    source: str                        # "adjtimex", "timedatectl" or "none"
    max_error_s: float | None = None
    est_error_s: float | None = None
    offset_s: float | None = None

    @property
    def trusted(self) -> bool:
        """Synchronised, and not before the earliest time a real clock can show."""
        return bool(self.synchronised) and self.now >= _EARLIEST_TRUSTED


def _adjtimex() -> ClockState | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    now = time.time()
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()          # modes = 0: read only
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    unit = 1e-9 if tx.status & _STA_NANO else 1e-6
    return ClockState(now, state != _TIME_ERROR and not tx.status & _STA_UNSYNC, "adjtimex",
                      max_error_s=tx.maxerror * 1e-6, est_error_s=tx.esterror * 1e-6,
                      offset_s=tx.offset * unit)


def _adjtimex_synchronised() -> bool | None:
    state = _adjtimex()
    return None if state is None else state.synchronised


def clock_state() -> ClockState:
    """The kernel's view of the clock: ``adjtimex(2)`` read-only (status, estimated and maximum
    error, PLL offset), else ``timedatectl show -p NTPSynchronized``."""
    state = _adjtimex()
    if state is not None:
        return state
    synced = _timedatectl_synchronised()
    return ClockState(time.time(), synced, "timedatectl" if synced is not None else "none")


def _timedatectl_synchronised() -> bool | None:
    try:
        out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = out.stdout.strip()
    return {"yes": True, "no": False}.get(value)


def clock_synchronised(now: float | None = None) -> bool:
    """True when the kernel says its clock is synchronised and the time (``now``, default the
    system clock) is plausible."""
    if (time.time() if now is None else now) < _EARLIEST_TRUSTED:
        return False
    state = _adjtimex_synchronised()
    if state is None:
        state = _timedatectl_synchronised()
    if state is None:
        log.warning("cannot tell whether the clock is synchronised; treating it as not")
        return False
    return state
