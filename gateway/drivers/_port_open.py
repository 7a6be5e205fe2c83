"""Opening a serial port without letting it stop the event loop or the process.

Both serial transports (our frame link for DL/T 645 and CJ/T 188, pymodbus' for Modbus RTU)
open their port through :func:`open_off_loop`: the blocking part (``open(2)``, line settings,
flushes) runs in a daemon thread and the caller waits for it with a deadline. A device that
hangs in ``open`` (a serial driver still draining the output of a killed process holds the
tty lock for up to its closing wait) then costs one bus an ``OSError`` and a retry on the next
tick, not the whole gateway; and being a daemon thread, a stuck opener does not keep the
process from exiting on SIGTERM either (``asyncio.to_thread`` would: the default executor is
joined at exit).

:func:`effective_parity` is about pseudo-terminals (socat pairs in tests and the simulator).
A pty has no line: Linux' pty driver forces 8 data bits and no parity whatever is asked
(drivers/tty/pty.c, ``pty_set_termios``), and the C library's ``tcsetattr`` on this platform
reports EINVAL when none of the requested changes took effect. So reopening a pty that an
earlier run had set to the same speed fails for any parity but "N" — the cause of the frozen
gateway restarts seen with DL/T 645's 8E1. Ptys are therefore opened with parity "N".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import termios
import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["effective_parity", "is_pseudo_terminal", "open_off_loop"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Where Linux' devpts file system keeps pseudo-terminal slaves (Unix98 ptys).
_PTS_DIR = "/dev/pts/"


def is_pseudo_terminal(path: str) -> bool:
    """True if ``path`` (possibly a symbolic link, as socat makes) is a pty slave."""
    return os.path.realpath(path).startswith(_PTS_DIR)


def effective_parity(path: str, parity: str) -> str:
    """The parity to ask for on ``path``: ``parity``, but "N" on a pseudo-terminal."""
    if parity != "N" and is_pseudo_terminal(path):
        logger.debug("%s is a pseudo-terminal: opened with parity N instead of %s",
                     path, parity)
        return "N"
    return parity


async def open_off_loop(opener: Callable[[], T], discard: Callable[[T], None], *,
                        deadline: float, what: str) -> T:
    """Run ``opener`` in a daemon thread and return what it returns.

    Raises ``OSError`` if it has not finished within ``deadline`` seconds, and the opener's
    own exception otherwise (a ``termios.error`` becomes an ``OSError`` with its errno); the
    caller adds which port. A result that arrives after the caller stopped waiting (deadline,
    cancellation, loop closed) is handed to ``discard``. ``what`` names the thread and log
    lines.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def discard_quietly(result: T) -> None:
        try:
            discard(result)
        except Exception as exc:   # nobody is left to tell but the log
            logger.warning("%s: closing a port opened too late failed: %s", what, exc)

    def deliver(result: T) -> None:                                      # on the loop
        if waiter.done():
            discard_quietly(result)
        else:
            waiter.set_result(result)

    def fail(error: Exception) -> None:                                  # on the loop
        if not waiter.done():
            waiter.set_exception(error)

    def run() -> None:                                                   # in the thread
        try:
            result = opener()
        except termios.error as exc:
            code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
            error: Exception = OSError(code, f"line settings refused: {exc}")
        except Exception as exc:   # handed to the waiting task
            error = exc
        else:
            try:
                loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:    # the loop is closed: the gateway has stopped meanwhile
                discard_quietly(result)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fail, error)

    threading.Thread(target=run, name=f"kemon-open[{what}]", daemon=True).start()
    try:
        async with asyncio.timeout(deadline):
            return await waiter
    except TimeoutError:
        raise OSError(f"opening did not finish within {deadline:g} s") from None
    finally:
        waiter.cancel()       # a late result is discarded
