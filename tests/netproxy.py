"""A TCP proxy for partition tests: forward, go silent without closing anything, drop everything.

A mobile link that loses coverage does not close TCP connections: packets just stop, both ends
keep their sockets open, and only keepalives (or a write timing out) reveal it. ``TcpProxy``
reproduces that between a client and a server on 127.0.0.1::

    with TcpProxy(broker.port) as proxy:          # listens on a free port: proxy.port
        ... connect the gateway to 127.0.0.1:proxy.port ...
        proxy.blackhole()        # both directions stop; every connection stays open
        proxy.resume()           # forwarding goes on; bytes held meanwhile are delivered
        proxy.drop_all()         # close every connection (both sides see the close)

While black-holed the proxy stops *reading*, so what the peers send waits in socket buffers
and is delivered, in order and intact, after ``resume`` — as TCP retransmission does after a
short outage. A connection opened during a black hole is accepted (as by a NAT box on the way)
but reaches the server only after ``resume``. A peer that gives up and closes during the black
hole is not noticed by the other side until ``resume`` either: no FIN gets through.

The proxy runs its own asyncio loop in a background thread, so synchronous tests and asyncio
tests (whose own loop is in the main thread) can both drive it; every control call returns once
the proxy's loop has applied it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypeVar

__all__ = ["ProxyError", "TcpProxy"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK = 65536
_CONTROL_TIMEOUT = 5.0


class ProxyError(RuntimeError):
    """The proxy is not running, or did not answer a control call."""


@dataclass(eq=False)
class _Pair:
    """One client connection and (once made) its upstream connection."""

    number: int
    client: asyncio.StreamWriter
    handler: asyncio.Task[None]
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None and not writer.is_closing():
                writer.close()

    async def aclose(self) -> None:
        self.close()
        for writer in (self.client, self.upstream):
            if writer is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()


class TcpProxy:
    """Forwards ``listen_host:port`` (0: a free port) to ``target_host:target_port``."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.host = listen_host
        self._listen_port = listen_port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._flowing: asyncio.Event | None = None
        self._pairs: set[_Pair] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._accepted = 0
        self._bytes_up = 0
        self._bytes_down = 0

    # --- state, readable from any thread ---------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise ProxyError("proxy not started")
        return self._port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def blackholed(self) -> bool:
        return self._flowing is not None and not self._flowing.is_set()

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy."""
        return len(self._pairs)

    @property
    def accepted(self) -> int:
        """Client connections accepted since start."""
        return self._accepted

    @property
    def bytes_up(self) -> int:
        """Bytes forwarded client → server."""
        return self._bytes_up

    @property
    def bytes_down(self) -> int:
        """Bytes forwarded server → client."""
        return self._bytes_down

    # --- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise ProxyError("proxy already started")
        self._thread = threading.Thread(target=self._run, name="netproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(_CONTROL_TIMEOUT):
            raise ProxyError("proxy did not start")
        if self._startup_error is not None:
            self._thread.join(_CONTROL_TIMEOUT)
            self._thread = None
            raise ProxyError(f"proxy could not listen on {self.host}:{self._listen_port}: "
                             f"{self._startup_error}") from self._startup_error
        log.info("proxy %s:%d -> %s:%d", self.host, self.port, *self.target)

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop, join the thread."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):       # loop already gone
                loop.call_soon_threadsafe(stop.set)
        thread.join(_CONTROL_TIMEOUT)
        if thread.is_alive():
            raise ProxyError("proxy thread did not stop")
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- control -----------------------------------------------------------------------------

    def blackhole(self) -> None:
        """Stop forwarding in both directions; keep every connection open."""
        self._call(self._set_flowing, False)
        log.info("proxy :%d black-holed (%d connections held)", self.port, self.connections)

    def resume(self) -> None:
        """Forward again, starting with whatever was held."""
        self._call(self._set_flowing, True)
        log.info("proxy :%d forwarding again", self.port)

    def drop_all(self) -> int:
        """Close every connection (both sides); return how many. New ones are still accepted."""
        count = self._call(self._drop_all)
        log.info("proxy :%d dropped %d connections", self.port, count)
        return count

    def _call(self, fn: Callable[..., Coroutine[Any, Any, _T]], *args: Any) -> _T:
        loop = self._loop
        if loop is None or self._thread is None:
            raise ProxyError("proxy not running")
        future = asyncio.run_coroutine_threadsafe(fn(*args), loop)
        try:
            return future.result(_CONTROL_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise ProxyError("proxy did not answer") from None

    async def _set_flowing(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _drop_all(self) -> int:
        pairs = list(self._pairs)
        for pair in pairs:
            pair.handler.cancel()             # its clean-up closes both sides
        await asyncio.gather(*(p.handler for p in pairs), return_exceptions=True)
        return len(pairs)

    # --- the loop thread ---------------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            self._ready.set()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._flowing = asyncio.Event()
        self._flowing.set()
        try:
            server = await asyncio.start_server(self._accept, self.host, self._listen_port)
        except OSError as exc:
            self._startup_error = exc
            return
        self._port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            self._flowing.set()          # let nothing hang on a black hole while closing
            handlers = list(self._handlers)
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._flowing is not None
        self._handlers.add(task)
        self._accepted += 1
        pair = _Pair(self._accepted, writer, task)
        self._pairs.add(pair)
        try:
            await self._flowing.wait()        # a connection made in a black hole waits here
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError as exc:
                log.info("proxy connection %d: upstream %s:%d refused: %s", pair.number,
                         *self.target, exc)
                return
            pair.upstream = up_writer
            pair.tasks = [
                asyncio.create_task(self._pipe(reader, up_writer, up=True),
                                    name=f"netproxy[{pair.number}].up"),
                asyncio.create_task(self._pipe(up_reader, writer, up=False),
                                    name=f"netproxy[{pair.number}].down"),
            ]
            # Either side closing ends both directions (MQTT does not half-close).
            await asyncio.wait(pair.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            for t in pair.tasks:
                t.cancel()
            await asyncio.gather(*pair.tasks, return_exceptions=True)
            await pair.aclose()
            self._pairs.discard(pair)
            self._handlers.discard(task)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *,
                    up: bool) -> None:
        flowing = self._flowing
        assert flowing is not None
        try:
            while True:
                await flowing.wait()          # black hole: stop reading, keep the socket
                data = await src.read(_CHUNK)
                await flowing.wait()          # read (or EOF) just before the black hole: hold it
                if not data:
                    return
                # Counted before the write: the peer may read the bytes (in another thread)
                # before this loop runs its next statement.
                if up:
                    self._bytes_up += len(data)
                else:
                    self._bytes_down += len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            return
