"""The collector's MQTT 5 connection: paho-mqtt with manual acknowledgement, driven by asyncio.

One :class:`IngestLink` is one connection attempt and, once CONNACK arrived, the session on
it; reconnecting (with back-off) is the ingest's business, with a new ``IngestLink`` each time.

How it runs: ``paho.Client.connect`` (TCP connect, TLS handshake, CONNECT queued) blocks, so it
runs once in the default executor. From then on everything happens in the event loop's thread:
paho's socket callbacks register the socket with ``loop.add_reader``/``add_writer`` (paho's
"external event loop" mode), and :meth:`IngestLink.watch` calls ``loop_misc`` (paho's
keepalive) and drops a link from which nothing arrived for 1.5 x keepalive.

Acknowledgement: the client is built with ``manual_ack=True``, so paho sends no PUBACK by itself;
:meth:`IngestLink.ack` sends the PUBACK of a QoS 1 message when the ingest says so (after the
database committed it, in the order the messages arrived). Packet ids belong to a connection: an
``Incoming`` remembers the link it came on, and a message whose link has ended is never
acknowledged on another one (the broker sends it again on the next connection of the session).

Flow control, two layers:

* **Receive Maximum** (MQTT 5, 3.1.2.11.3) announced in CONNECT: the broker sends at most that
  many QoS 1 messages not yet acknowledged; the rest wait at the broker (in the session's
  queue, bounded there by the broker's own settings, e.g. Mosquitto's ``max_queued_messages``).
* **Pausing the socket**: :meth:`IngestLink.pause` stops reading (``remove_reader``), so TCP's
  window closes and the broker stops writing; :meth:`IngestLink.resume` reads again, first what
  TLS already decrypted (the selector cannot see those bytes). A pause longer than the keepalive
  costs the connection (the PINGRESP is not read); nothing is lost by that: what was not
  acknowledged comes again on the next connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol._mqtt_tls import ClientTlsContext, describe_tls_error

__all__ = ["Incoming", "IngestLink", "LinkError"]

log = logging.getLogger(__name__)

#: A link is dropped after this many keepalive intervals without a byte from the broker (a
#: healthy broker answers a PINGREQ sent at most one keepalive after the previous traffic).
SILENCE_FACTOR = 1.5
#: Reads of data TLS already decrypted, per readable event (bounded so one busy link cannot
#: keep the event loop to itself).
_PENDING_READS = 1000


class LinkError(Exception):
    """The connection could not be made, or it ended; ``reason`` is one line for a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message as it arrived: acknowledge ``mid`` (when ``qos`` is 1) on ``link`` only."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    link: IngestLink


class _LastWarning(logging.Handler):
    """Keeps paho's last warning (e.g. the TLS alert behind "failed to receive on socket") so
    a lost connection can say why, without paho logging on its own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class IngestLink:
    """One MQTT 5 connection of the collector (see the module docstring)."""

    def __init__(self, *, name: str, host: str, port: int, client_id: str, keepalive: int,
                 tls: ClientTlsContext | None, session_expiry: int, receive_maximum: int,
                 on_message: Callable[[Incoming], None]) -> None:
        self.name = name
        self._host, self._port = host, port
        self._keepalive = keepalive
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._on_message = on_message
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack: asyncio.Future[bool] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._suback: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._sock: socket.socket | None = None
        self._writing = False
        self._paused = False
        self.last_in = time.monotonic()
        self._warnings = _LastWarning()
        paho_log = logging.Logger(f"{__name__}.paho[{name}]", logging.WARNING)
        paho_log.propagate = False
        paho_log.addHandler(self._warnings)

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True,
                             reconnect_on_failure=False)
        client.enable_logger(paho_log)
        if tls is not None:
            client.tls_set_context(tls)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_message = self._cb_message
        client.on_subscribe = self._cb_subscribe
        client.on_socket_open = self._cb_socket_open
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        self._client = client

    # --- the ingest's side -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """CONNACK received and the connection not ended."""
        return self._connack.done() and not self._connack.cancelled() \
            and self._connack.exception() is None and not self._closed.done()

    @property
    def paused(self) -> bool:
        return self._paused

    async def connect(self, seconds: float) -> bool:
        """TCP, TLS and CONNECT/CONNACK within ``seconds``; returns CONNACK's session-present
        flag; ``LinkError`` otherwise. The session is persistent: clean start off, expiry
        ``session_expiry`` seconds (MQTT 5, 3.1.2.4 and 3.1.2.11.2)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry
        props.ReceiveMaximum = self._receive_maximum
        self._client.connect_timeout = seconds
        call = functools.partial(self._client.connect, self._host, self._port,
                                 keepalive=self._keepalive, clean_start=False, properties=props)
        pending = self._loop.run_in_executor(None, call)
        try:
            await pending
        except asyncio.CancelledError:
            # The blocking connect goes on in its thread; close whatever it opens.
            pending.add_done_callback(lambda _f: self.abort("cancelled"))
            raise
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self.abort("TLS handshake failed")
            raise LinkError(describe_tls_error(exc)) from None
        except OSError as exc:
            self.abort("cannot connect")
            detail = exc.strerror or str(exc) or type(exc).__name__
            raise LinkError(f"cannot connect to {self._host}:{self._port}: {detail}") from None
        try:
            async with asyncio.timeout(seconds):
                ends: set[asyncio.Future[Any]] = {self._connack, self._closed}
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self.abort("no CONNACK")
            raise LinkError(f"no CONNACK from {self._host}:{self._port} within {seconds:g} s") \
                from None
        if self._connack.done():
            return self._connack.result()            # raises LinkError for a refusal
        self.abort("closed before CONNACK")
        raise LinkError(self._before_connack_reason())

    async def subscribe(self, filters: Sequence[tuple[str, SubscribeOptions]],
                        seconds: float) -> None:
        """SUBSCRIBE to ``filters`` in one packet; ``LinkError`` when one is refused."""
        rc, mid = self._client.subscribe(list(filters))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {mqtt.error_string(rc)}")
        future = self._suback[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                pending: set[asyncio.Future[Any]] = {future, self._closed}
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise LinkError(f"no SUBACK within {seconds:g} s") from None
        finally:
            self._suback.pop(mid, None)
        if future not in done:
            raise LinkError(self._closed.result())
        refused = [f"{name} ({code})" for (name, _), code in zip(filters, future.result(),
                                                                  strict=False)
                   if code.is_failure]
        if refused:
            raise LinkError(f"the broker refused the subscription to {', '.join(refused)}")

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS 1 PUBLISH (its PUBACK is not awaited); False when not connected."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack(self, message: Incoming) -> bool:
        """PUBACK ``message`` (QoS 1) if it arrived on this link and the link is up; True when
        sent (a QoS 0 message needs none and counts as done)."""
        if message.link is not self or not self.connected:
            return False
        if message.qos == 0:
            return True
        return self._client.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def pause(self) -> None:
        """Stop reading from the socket (backpressure: TCP's window closes)."""
        if self._paused:
            return
        self._paused = True
        if self._sock is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock)

    def resume(self) -> None:
        """Read again: what TLS already holds now, the socket as it becomes readable."""
        if not self._paused:
            return
        self._paused = False
        self.last_in = time.monotonic()
        if self._sock is not None and not self._closed.done():
            self._loop.add_reader(self._sock, self._readable)
            self._loop.call_soon(self._readable)

    async def watch(self) -> NoReturn:
        """Keep the connection alive (paho's keepalive, the silence watchdog) until it ends;
        then raise ``LinkError`` with the reason."""
        tick = min(0.5, self._keepalive / 20) if self._keepalive > 0 else 0.5
        limit = SILENCE_FACTOR * self._keepalive
        while True:
            await asyncio.wait({self._closed}, timeout=tick)
            if self._closed.done():
                raise LinkError(self._closed.result())
            self._client.loop_misc()
            silent = time.monotonic() - self.last_in
            if self._keepalive > 0 and not self._paused and silent > limit \
                    and not self._closed.done():
                self.abort(f"nothing received from the broker for {silent:.1f} s "
                           f"(keepalive {self._keepalive} s)")

    async def disconnect(self, seconds: float) -> None:
        """A normal DISCONNECT (the session stays: it has an expiry), then close."""
        if self.connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.shield(self._closed)
        self.abort("disconnected")

    def abort(self, reason: str) -> None:
        """Close the socket now, without DISCONNECT."""
        sock, self._sock = self._sock, None
        if sock is not None:
            self._forget(sock)
            with contextlib.suppress(OSError):
                sock.close()
        if self._tls is not None:
            self._tls.close_sockets()    # also one a failed connect left open
        if not self._closed.done():
            self._closed.set_result(reason)

    # --- paho's callbacks (event loop thread, except during connect) -------------------------

    def _in_loop(self, func: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._thread:
            func(*args)
        else:
            self._loop.call_soon_threadsafe(func, *args)

    def _cb_socket_open(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._watch_socket, sock)

    def _watch_socket(self, sock: socket.socket) -> None:
        if self._closed.done():
            sock.close()
            return
        self._sock = sock
        self.last_in = time.monotonic()
        if not self._paused:
            self._loop.add_reader(sock, self._readable)
        if self._client.want_write():
            self._register_write(sock)

    def _cb_socket_close(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        # paho closes the socket right after this returns: unregister it first (only a socket
        # this loop watches, in the loop's thread; the executor's connect registered none yet).
        current = self._sock
        if current is not None and sock is current:
            self._sock = None
            self._forget(current)

    def _forget(self, sock: socket.socket) -> None:
        if sock.fileno() >= 0:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._writing = False

    def _cb_register_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._register_write, sock)

    def _register_write(self, sock: socket.socket) -> None:
        if sock is self._sock and not self._writing:
            self._writing = True
            self._loop.add_writer(sock, self._client.loop_write)

    def _cb_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unregister_write, sock)

    def _unregister_write(self, sock: socket.socket) -> None:
        if self._writing and sock is self._sock:
            self._writing = False
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        if self._paused or self._sock is None:
            return
        self.last_in = time.monotonic()
        self._client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see: read them now, unless a
        # message just made the ingest pause.
        for _ in range(_PENDING_READS):
            sock = self._client.socket()
            if self._paused or sock is None or sock is not self._sock \
                    or not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                return
            self._client.loop_read()
        if not self._paused:
            self._loop.call_soon(self._readable)     # more pending: continue after others

    def _cb_connect(self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _p: Properties | None) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(LinkError(
                f"the broker refused the connection: {reason} (0x{reason.value:02x})"))
            return
        self._connack.set_result(bool(flags.session_present))

    def _cb_disconnect(self, _c: mqtt.Client, _u: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, _p: Properties | None) -> None:
        if flags.is_disconnect_packet_from_server:
            text = f"the broker disconnected us: {reason} (0x{reason.value:02x})"
        else:
            text = f"connection lost: {self._warnings.last or reason}"
        self._in_loop(self._set_closed, text)

    def _set_closed(self, text: str) -> None:
        if not self._closed.done():
            self._closed.set_result(text)
        if not self._connack.done():
            self._connack.set_exception(LinkError(self._before_connack_reason()))
            self._connack.exception()    # retrieved: connect() reports it from _closed

    def _before_connack_reason(self) -> str:
        detail = self._warnings.last or (self._closed.result() if self._closed.done() else "")
        if "SSL" in detail or "alert" in detail:
            # TLS 1.3: the broker checks our certificate after our side of the handshake has
            # finished, so its refusal (an alert) arrives while we wait for CONNACK.
            alert = detail.rsplit("]", 1)[-1].split("(_ssl")[0].strip() or detail
            return f"TLS handshake failed: the broker refused our certificate ({alert})"
        return f"connection closed before CONNACK: {detail or 'no reason given'}"

    def _cb_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.last_in = time.monotonic()
        try:
            self._on_message(Incoming(message.topic, bytes(message.payload), message.mid,
                                      message.qos, self))
        except Exception:
            log.exception("%s: message handler failed", self.name)

    def _cb_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode],
                      _p: Properties | None) -> None:
        future = self._suback.get(mid)
        if future is not None and not future.done():
            future.set_result(reasons)
