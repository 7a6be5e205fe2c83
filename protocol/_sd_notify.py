"""systemd's service notification protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET``.

Written here rather than taken from a library: it is a few lines (an AF_UNIX datagram of
``KEY=value`` lines; a socket name starting with ``@`` is in the abstract namespace), and the
packages that wrap it are either unmaintained or need libsystemd's headers at install time.
Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import NoReturn

__all__ = ["feed_watchdog", "notify", "watchdog_seconds"]


def notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"WATCHDOG=1"``, ``"STATUS=…"``, ``"STOPPING=1"``);
    False when not run by systemd or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or not states:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode(), address)
    except OSError:
        return False
    return True


def watchdog_seconds() -> float | None:
    """The watchdog timeout systemd expects pings within (``WatchdogSec=``), or None when
    there is none for this process (``WATCHDOG_PID``, when set, must be ours)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000


async def feed_watchdog(limit: float) -> NoReturn:
    """Ping the watchdog from the event loop twice per ``limit`` seconds (WatchdogSec=), for
    ever: if the loop stops running (blocked in a call, deadlocked), the pings stop and systemd
    restarts the service."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(limit / 2)
