"""Serve a request/reply frame protocol on a serial device or a TCP port (for the simulators).

The protocol is two functions: ``split(buffer) -> (frame | None, n)`` (a codec's
``split_frame``, raising an error with ``skip`` on a corrupt frame) and
``answer(frame) -> bytes | None`` (``None``: stay silent, as a meter does for a frame that is
not addressed to it). Corrupt requests are dropped silently, as a meter would.

Serial: ``device`` is a path such as one end of a ``socat pty,raw,echo=0,link=A
pty,raw,echo=0,link=B`` pair; a pty ignores baud rate and parity. TCP: ``port`` (0 = any free
port; the port actually bound is appended to ``bound``). ``ready`` is set once the device is
open or the socket is listening. Runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import serial

__all__ = ["serve_frames"]

logger = logging.getLogger(__name__)

F = TypeVar("F")


def _replies(buffer: bytearray, split: Callable[[bytearray], tuple[F | None, int]],
             answer: Callable[[F], bytes | None]) -> list[bytes]:
    out: list[bytes] = []
    while True:
        try:
            frame, used = split(buffer)
        except ValueError as exc:
            logger.debug("dropping corrupt request: %s", exc)
            del buffer[:getattr(exc, "skip", 1) or 1]
            continue
        del buffer[:used]
        if frame is None:
            return out
        reply = answer(frame)
        if reply is not None:
            out.append(reply)


async def serve_frames(split: Callable[[bytearray], tuple[Any, int]],
                       answer: Callable[[Any], bytes | None], *, name: str,
                       device: str | None = None, host: str = "127.0.0.1",
                       port: int | None = None, ready: asyncio.Event | None = None,
                       bound: list[int] | None = None) -> None:
    """Answer requests on ``device`` (serial) or on ``host``:``port`` (TCP) until cancelled."""
    if (device is None) == (port is None):
        raise ValueError(f"{name}: give exactly one of device= or port=")
    if device is not None:
        await _serve_serial(split, answer, name, device, ready)
    else:
        assert port is not None
        await _serve_tcp(split, answer, name, host, port, ready, bound)


async def _serve_serial(split: Callable[[bytearray], tuple[Any, int]],
                        answer: Callable[[Any], bytes | None], name: str, device: str,
                        ready: asyncio.Event | None) -> None:
    try:
        port = serial.Serial(device, timeout=0)
    except serial.SerialException as exc:
        raise OSError(f"{name}: cannot open {device}: {exc}") from exc
    loop = asyncio.get_running_loop()
    buffer = bytearray()
    failed: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        try:
            buffer.extend(port.read(max(1, port.in_waiting)))
            for reply in _replies(buffer, split, answer):
                port.write(reply)
        except (serial.SerialException, OSError) as exc:
            loop.remove_reader(port.fileno())
            if not failed.done():
                failed.set_exception(OSError(f"{name}: {device}: {exc}"))

    loop.add_reader(port.fileno(), readable)
    logger.info("%s: answering on %s", name, device)
    try:
        if ready is not None:
            ready.set()
        await failed
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(port.fileno())
        port.close()


async def _serve_tcp(split: Callable[[bytearray], tuple[Any, int]],
                     answer: Callable[[Any], bytes | None], name: str, host: str, port: int,
                     ready: asyncio.Event | None, bound: list[int] | None) -> None:
    clients: set[asyncio.Task[Any]] = set()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        clients.add(task)
        buffer = bytearray()
        try:
            while data := await reader.read(4096):
                buffer += data
                for reply in _replies(buffer, split, answer):
                    writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            # Cancelled only when the server stops. Ending normally keeps asyncio 3.11's
            # stream callback from reporting the cancellation as an unhandled error.
            pass
        finally:
            clients.discard(task)
            writer.close()

    server = await asyncio.start_server(client, host, port)
    actual = server.sockets[0].getsockname()[1]
    if bound is not None:
        bound.append(actual)
    logger.info("%s: answering on %s:%d", name, host, actual)
    try:
        if ready is not None:
            ready.set()
        await server.serve_forever()
    finally:
        server.close()
        pending = list(clients)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await server.wait_closed()
