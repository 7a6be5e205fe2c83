"""Byte transport for the frame-based meter protocols (DL/T 645, CJ/T 188).

One :class:`FrameLink` per bus: a serial port (pyserial, non-blocking, the port's file
descriptor watched by the event loop; opened off the loop, see ``_port_open``) or a TCP
connection to a serial server (asyncio protocol). Received bytes collect in one buffer;
:meth:`FrameLink.transact` flushes stale input, sends a request and waits until the codec's
``split`` function finds a frame the caller accepts.

``split(buffer) -> (frame | None, n)`` is the codecs' ``split_frame``; it raises an error with
a ``skip`` attribute for a corrupt frame. Callers bound each transaction with
``asyncio.timeout``. A corrupt frame is skipped if a good frame follows
it in what has arrived; otherwise its error is raised at once (not after the timeout).
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol, TypeVar

import serial

from .._model import BusConfig
from ._port_open import effective_parity, open_off_loop

__all__ = ["FrameLink", "LinkClosed", "open_link"]

logger = logging.getLogger(__name__)

F = TypeVar("F")


class LinkClosed(ConnectionError):
    """The port or connection went away."""


class _Skippable(Protocol):
    skip: int


class FrameLink(ABC):
    """Shared buffer logic; subclasses move the bytes."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._buffer = bytearray()
        self._arrived = asyncio.Event()
        self._closed: BaseException | None = None

    # -- called by subclasses
    def _feed(self, data: bytes) -> None:
        self._buffer += data
        self._arrived.set()

    def _lost(self, exc: BaseException | None) -> None:
        self._closed = exc or LinkClosed(f"{self.name}: connection closed")
        self._arrived.set()

    # -- transport specifics
    @abstractmethod
    async def open(self) -> None:
        ...

    @abstractmethod
    async def _write(self, data: bytes) -> None:
        ...

    def _discard_pending(self) -> None:  # noqa: B027 - optional hook: TCP holds nothing back
        """Drop bytes the transport holds that have not reached the buffer yet."""

    @abstractmethod
    async def close(self) -> None:
        ...

    @property
    @abstractmethod
    def is_open(self) -> bool:
        ...

    # -- the one operation drivers use
    async def transact(self, request: bytes, split: Callable[[bytearray], tuple[F | None, int]],
                       accept: Callable[[F], bool]) -> F:
        """Send ``request`` and return the first frame ``accept`` takes (frames it refuses,
        such as an adapter's echo of our own request, are dropped).

        Waits as long as there is no complete frame: callers bound the whole transaction with
        ``asyncio.timeout(bus.timeout)``. Raises the codec's frame error for a corrupt reply,
        LinkClosed/OSError if the link fails.
        """
        self._discard_pending()
        self._buffer.clear()
        self._arrived.clear()
        await self._write(request)
        while True:
            frame = self._take(split)
            if frame is not None and accept(frame):
                return frame
            if frame is not None:
                logger.debug("%s: ignoring frame %r", self.name, frame)
                continue
            if self._closed is not None:
                raise LinkClosed(f"{self.name}: {self._closed}")
            self._arrived.clear()
            await self._arrived.wait()

    def _take(self, split: Callable[[bytearray], tuple[F | None, int]]) -> F | None:
        first_error: Exception | None = None
        while True:
            try:
                frame, used = split(self._buffer)
            except ValueError as exc:
                skip = getattr(exc, "skip", 1) or 1
                del self._buffer[:skip]
                first_error = first_error or exc
                continue
            del self._buffer[:used]
            if frame is None and first_error is not None:
                raise first_error
            return frame


class _SerialLink(FrameLink):
    def __init__(self, bus: BusConfig) -> None:
        super().__init__(bus.name)
        self._bus = bus
        self._port: serial.Serial | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._port is not None and self._closed is None

    async def open(self) -> None:
        bus = self._bus
        if bus.port is None:
            raise ValueError(f"bus {bus.name!r}: no serial port")
        await self.close()

        parity = effective_parity(bus.port, bus.parity)

        def open_port() -> serial.Serial:
            return serial.Serial(bus.port, baudrate=bus.baudrate, bytesize=bus.bytesize,
                                 parity=parity, stopbits=bus.stopbits, timeout=0,
                                 write_timeout=bus.timeout)

        # Off the event loop, with a deadline (see _port_open): a port that hangs in open()
        # must not freeze the other buses and the stop signal.
        try:
            port = await open_off_loop(open_port, serial.Serial.close,
                                       deadline=max(2.0, 2 * bus.timeout),
                                       what=f"bus {bus.name!r}: {bus.port}")
        except OSError as exc:       # serial.SerialException is one too
            raise OSError(f"bus {bus.name!r}: cannot open {bus.port}: {exc}") from exc
        self._port, self._closed = port, None
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(port.fileno(), self._readable)
        logger.info("bus %s: opened %s at %d %d%s%d", bus.name, bus.port, bus.baudrate,
                    bus.bytesize, parity, bus.stopbits)

    def _readable(self) -> None:
        assert self._port is not None
        try:
            data = self._port.read(max(1, self._port.in_waiting))
        except (serial.SerialException, OSError) as exc:
            self._detach()
            self._lost(exc)
            return
        if data:
            self._feed(data)

    def _detach(self) -> None:
        if self._port is not None and self._loop is not None:
            self._loop.remove_reader(self._port.fileno())
            self._loop = None

    def _discard_pending(self) -> None:
        if self.is_open:
            assert self._port is not None
            self._port.reset_input_buffer()

    async def _write(self, data: bytes) -> None:
        port = self._port
        if port is None or self._closed is not None:
            raise LinkClosed(f"{self.name}: port not open")

        def write() -> None:
            port.write(data)
            port.flush()                 # wait until sent: RS-485 turns the line around

        try:
            await asyncio.to_thread(write)
        except serial.SerialException as exc:
            raise OSError(f"{self.name}: write failed: {exc}") from exc

    async def close(self) -> None:
        self._detach()
        if self._port is not None:
            self._port.close()
            self._port = None


class _TcpProtocol(asyncio.Protocol):
    def __init__(self, link: _TcpLink) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._lost(exc)


class _TcpLink(FrameLink):
    def __init__(self, bus: BusConfig) -> None:
        super().__init__(bus.name)
        self._bus = bus
        self._transport: asyncio.Transport | None = None

    @property
    def is_open(self) -> bool:
        return self._transport is not None and self._closed is None

    async def open(self) -> None:
        bus = self._bus
        if bus.host is None or bus.tcp_port is None:
            raise ValueError(f"bus {bus.name!r}: TCP needs host and port")
        loop = asyncio.get_running_loop()
        await self.close()
        try:
            async with asyncio.timeout(bus.timeout):
                transport, _ = await loop.create_connection(
                    lambda: _TcpProtocol(self), bus.host, bus.tcp_port)
        except TimeoutError as exc:
            raise OSError(f"bus {bus.name!r}: connect to {bus.host}:{bus.tcp_port} "
                          "timed out") from exc
        self._transport, self._closed = transport, None
        logger.info("bus %s: connected to %s:%d", bus.name, bus.host, bus.tcp_port)

    async def _write(self, data: bytes) -> None:
        if self._transport is None or self._closed is not None:
            raise LinkClosed(f"{self.name}: not connected")
        self._transport.write(data)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


def open_link(bus: BusConfig) -> FrameLink:
    """A not-yet-opened link for ``bus``: TCP when it has a host, serial otherwise."""
    return _TcpLink(bus) if bus.is_tcp else _SerialLink(bus)
