"""One MQTT 5 connection: a paho-mqtt 2.x client driven by the asyncio event loop, no thread.

The mechanism the gateway's uplink (``protocol._mqtt_publish``) and the collector's ingest
(``collector._mqtt``) share; each subclasses :class:`PahoLoopLink` for what differs (what CONNACK
yields, the error type, what becomes of a received message, PUBACK tracking, pausing).

How it runs: ``paho.Client.connect`` (TCP connect, TLS handshake, CONNECT queued) blocks, so it
runs once in the default executor. From then on everything happens in the event loop's thread:
paho's socket callbacks register the socket with ``loop.add_reader``/``add_writer`` (paho's
"external event loop" mode, the same technique aiomqtt uses), and :meth:`PahoLoopLink.watch`
calls ``loop_misc`` (paho's keepalive: PINGREQ after ``keepalive`` seconds without traffic).

A silent link (TCP stays open, nothing arrives, as on a mobile network) is detected by a
watchdog here, not by paho alone: paho's own check closes the connection only a further
``keepalive`` after its unanswered PINGREQ, up to 2 x keepalive after the last byte received.
``watch()`` drops the connection when nothing at all arrived for 1.5 x keepalive (a healthy
broker answers a PINGREQ sent at most 1 x keepalive after the previous traffic) — unless
reading is paused on purpose (``_paused``, the collector's backpressure).

The client is built with ``manual_ack=True`` (paho sends no PUBACK by itself) and
``reconnect_on_failure=False``: each link is one connection attempt and then discarded;
reconnecting, with back-off, is the caller's business.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, NoReturn, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ._mqtt_tls import ClientTlsContext, describe_tls_error

__all__ = ["SILENCE_FACTOR", "PahoLoopLink"]

#: A link is dropped after this many keepalive intervals without a byte from the broker.
SILENCE_FACTOR = 1.5
#: Reads of data TLS already decrypted, per readable event (bounded so one busy link cannot
#: keep the event loop to itself).
_PENDING_READS = 1000

ConnackT = TypeVar("ConnackT")


class _LastWarning(logging.Handler):
    """Keeps paho's last warning or error (e.g. the TLS alert behind "failed to receive on
    socket") so that a lost connection can say why, without paho logging on its own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class PahoLoopLink(abc.ABC, Generic[ConnackT]):
    """One MQTT 5 connection attempt and, once connected, the session on it.

    Subclasses say what a successful CONNACK yields (:meth:`_connack_value`), which exception
    reports a failure (:meth:`_link_error`) and what a received message becomes
    (:meth:`_deliver`); they may add paho callbacks and settings on ``self._client``.
    """

    def __init__(self, *, name: str, host: str, port: int, client_id: str, keepalive: int,
                 tls: ClientTlsContext | None, session_expiry: int,
                 receive_maximum: int) -> None:
        self.name = name
        self._host, self._port = host, port
        self._keepalive = keepalive
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._tls = tls
        self._log = logging.getLogger(type(self).__module__)
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack: asyncio.Future[ConnackT] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._suback: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._sock: socket.socket | None = None
        self._writing = False
        self._paused = False
        self.last_in = time.monotonic()
        self._warnings = _LastWarning()
        paho_log = logging.Logger(f"{type(self).__module__}.paho[{name}]", logging.WARNING)
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

    # --- what differs: the subclass's hooks --------------------------------------------------

    @abc.abstractmethod
    def _connack_value(self, flags: mqtt.ConnectFlags,
                       properties: Properties | None) -> ConnackT:
        """What :meth:`connect` returns for a successful CONNACK."""

    @abc.abstractmethod
    def _link_error(self, reason: str, *, connected: bool) -> Exception:
        """The exception reporting ``reason``; ``connected``: CONNACK had been received."""

    @abc.abstractmethod
    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        """Hand a received message to the caller (exceptions are logged, not raised)."""

    # --- the caller's side -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """CONNACK received and the connection not ended."""
        return self._connack.done() and not self._connack.cancelled() \
            and self._connack.exception() is None and not self._closed.done()

    async def connect(self, seconds: float) -> ConnackT:
        """TCP, TLS and CONNECT/CONNACK within ``seconds``; the subclass's error otherwise.
        The session is persistent: clean start off, expiry ``session_expiry`` seconds, and
        ``receive_maximum`` QoS 1 messages in flight towards us (MQTT 5, 3.1.2.4, 3.1.2.11.2
        and 3.1.2.11.3)."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry   # MQTT 5, 3.1.2.11.2 (seconds)
        props.ReceiveMaximum = self._receive_maximum          # MQTT 5, 3.1.2.11.3
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
            raise self._link_error(describe_tls_error(exc), connected=False) from None
        except OSError as exc:
            self.abort("cannot connect")
            detail = exc.strerror or str(exc) or type(exc).__name__
            raise self._link_error(f"cannot connect to {self._host}:{self._port}: {detail}",
                                   connected=False) from None
        try:
            async with asyncio.timeout(seconds):
                ends: set[asyncio.Future[Any]] = {self._connack, self._closed}
                await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self.abort("no CONNACK")
            raise self._link_error(
                f"no CONNACK from {self._host}:{self._port} within {seconds:g} s",
                connected=False) from None
        if self._connack.done():
            return self._connack.result()            # raises the error for a refusal
        self.abort("closed before CONNACK")
        raise self._link_error(self._before_connack_reason(), connected=False)

    async def watch(self) -> NoReturn:
        """Keep the connection alive (paho's keepalive, the silence watchdog) until it ends;
        then raise the subclass's error with the reason."""
        tick = min(0.5, self._keepalive / 20) if self._keepalive > 0 else 0.5
        limit = SILENCE_FACTOR * self._keepalive
        while True:
            await asyncio.wait({self._closed}, timeout=tick)
            if self._closed.done():
                raise self._link_error(self._closed.result(), connected=True)
            self._client.loop_misc()
            silent = time.monotonic() - self.last_in
            if self._keepalive > 0 and not self._paused and silent > limit \
                    and not self._closed.done():
                self.abort(f"nothing received from the broker for {silent:.1f} s "
                           f"(keepalive {self._keepalive} s)")

    async def disconnect(self, seconds: float) -> None:
        """A normal DISCONNECT (the broker then discards the will; a session with an expiry
        stays), then close."""
        if self.connected:
            self._client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await asyncio.shield(self._closed)
        self.abort("disconnected")

    def abort(self, reason: str) -> None:
        """Close the socket now, without DISCONNECT (the broker publishes the will, if any)."""
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
        # paho closes the socket right after this returns: unregister it first. Only a socket
        # this loop watches is touched, and that happens in the loop's thread (the executor's
        # connect has no registered socket yet).
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
        # message just made the caller pause.
        for _ in range(_PENDING_READS):
            sock = self._client.socket()
            if self._paused or sock is None or sock is not self._sock \
                    or not isinstance(sock, ssl.SSLSocket) or sock.pending() == 0:
                return
            self._client.loop_read()
        if not self._paused:
            self._loop.call_soon(self._readable)     # more pending: continue after others

    def _cb_connect(self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(self._link_error(
                f"the broker refused the connection: {reason} (0x{reason.value:02x})",
                connected=False))
            return
        self._connack.set_result(self._connack_value(flags, properties))

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
            self._connack.set_exception(
                self._link_error(self._before_connack_reason(), connected=False))
            self._connack.exception()    # retrieved: connect() reports it from _closed

    def _before_connack_reason(self) -> str:
        detail = self._warnings.last or (self._closed.result() if self._closed.done() else "")
        if "SSL" in detail or "alert" in detail:
            # TLS 1.3: the broker checks our certificate after our side of the handshake has
            # finished, so its refusal (an alert) arrives while we wait for CONNACK.
            alert = detail.rsplit("]", 1)[-1].split("(_ssl")[0].strip() or detail
            return f"TLS handshake failed: the broker refused our certificate ({alert})"
        if "_ssl.c" in detail:
            # the broker closed the TLS session without an alert we could read: after a
            # refused certificate, the alert and the close race (seen with Mosquitto 2.0)
            cause = detail.split("(_ssl")[0].strip()
            return (f"TLS session closed by the broker before CONNACK ({cause}): it may have "
                    "refused our certificate (expired, revoked or from another CA)")
        return f"connection closed before CONNACK: {detail or 'no reason given'}"

    def _cb_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.last_in = time.monotonic()
        try:
            self._deliver(message)
        except Exception:
            self._log.exception("%s: message handler failed", self.name)

    def _cb_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode],
                      _p: Properties | None) -> None:
        future = self._suback.get(mid)
        if future is not None and not future.done():
            future.set_result(reasons)
