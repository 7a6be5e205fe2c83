"""One MQTT 5 connection: paho-mqtt driven by the asyncio event loop, no thread of its own.

Why paho directly and not aiomqtt: aiomqtt 2.5's ``publish`` awaits each PUBACK and its
``on_publish`` drops the PUBACK's reason code, so a broker's refusal (MQTT 5 reason code
0x87 "Not authorized", sent when the ACL forbids the topic) would count as delivered. Here every
PUBACK reaches ``on_puback(mid, reason_code)`` with its reason code, publishes are pipelined (no
waiting for one PUBACK before the next PUBLISH), and the caller decides what is delivered.

How it runs: ``Client.connect`` (TCP connect, TLS handshake, CONNECT queued) blocks, so it runs
in the default executor, once. From then on everything happens in the event loop's thread:
paho's socket callbacks register the socket with ``loop.add_reader``/``add_writer`` (paho's
"external event loop" mode, the same technique aiomqtt uses), and ``watch()`` calls
``loop_misc`` (paho's keepalive: PINGREQ after ``keepalive`` seconds without traffic).

A silent link (TCP stays open, nothing arrives, as on a mobile network) is detected by a
watchdog here, not by paho alone: paho's own check closes the connection only a further
``keepalive`` after its unanswered PINGREQ, up to 2 x keepalive after the last byte received.
``watch()`` drops the connection when nothing at all arrived for 1.5 x keepalive (a healthy
broker answers a PINGREQ sent at most 1 x keepalive after the previous traffic).

Each ``MqttLink`` is used for one connection attempt and then discarded; reconnecting is the
caller's business (with its own back-off), so paho never re-sends in-flight messages itself.
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol._mqtt_tls import ClientTlsContext, describe_tls_error

__all__ = ["ConnectInfo", "LinkError", "MqttLink"]

log = logging.getLogger(__name__)

#: MQTT 5 (OASIS mqtt-v5.0, 3.2.2.3.3): Receive Maximum absent from CONNACK means 65,535.
DEFAULT_RECEIVE_MAXIMUM = 65535
#: A silent link is dropped after this many keepalive intervals without a byte from the broker.
SILENCE_FACTOR = 1.5


class LinkError(Exception):
    """The connection could not be made, or it ended. ``reason`` is one line for a log;
    ``connected`` says whether CONNACK had been received (the session had started)."""

    def __init__(self, reason: str, *, connected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connected = connected


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    session_present: bool
    receive_maximum: int       # PUBLISHes at QoS 1 the broker accepts unacknowledged at once


class _Capture(logging.Handler):
    """Keeps paho's last warning or error (e.g. the TLS alert behind "failed to receive on
    socket") so that a lost connection can say why, without paho logging on its own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


class MqttLink:
    """One MQTT 5 connection attempt and, once connected, the session on it."""

    def __init__(self, *, name: str, host: str, port: int, client_id: str, keepalive: int,
                 tls: ClientTlsContext | None, will: tuple[str, bytes] | None,
                 session_expiry: int, receive_maximum: int,
                 on_puback: Callable[[int, ReasonCode], None],
                 on_message: Callable[[mqtt.MQTTMessage], None]) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._keepalive = keepalive
        self._session_expiry = session_expiry
        self._receive_maximum = receive_maximum
        self._on_puback = on_puback
        self._on_message = on_message
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._connack: asyncio.Future[ConnectInfo] = self._loop.create_future()
        self._closed: asyncio.Future[str] = self._loop.create_future()
        self._suback: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._sock: socket.socket | None = None
        self._writing = False
        self.last_in = time.monotonic()
        self._capture = _Capture()
        paho_log = logging.Logger(f"{__name__}.paho[{name}]", logging.WARNING)
        paho_log.propagate = False
        paho_log.addHandler(self._capture)

        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5, manual_ack=True,
                             reconnect_on_failure=False)
        client.enable_logger(paho_log)
        client.max_inflight_messages_set(0)    # 0: no limit in paho; the caller keeps a window
        if tls is not None:
            client.tls_set_context(tls)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_message = self._cb_message
        client.on_subscribe = self._cb_subscribe
        client.on_socket_open = self._cb_socket_open
        client.on_socket_close = self._cb_socket_close
        client.on_socket_register_write = self._cb_register_write
        client.on_socket_unregister_write = self._cb_unregister_write
        self._client = client

    # --- the caller's side -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connack.done() and not self._connack.cancelled() \
            and self._connack.exception() is None and not self._closed.done()

    @property
    def closed(self) -> asyncio.Future[str]:
        """Resolves with the reason once the connection has ended."""
        return self._closed

    async def connect(self, seconds: float) -> ConnectInfo:
        """TCP, TLS and CONNECT/CONNACK within ``seconds``; ``LinkError`` otherwise."""
        timeout = seconds
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._session_expiry   # MQTT 5, 3.1.2.11.2 (seconds)
        props.ReceiveMaximum = self._receive_maximum          # MQTT 5, 3.1.2.11.3
        self._client.connect_timeout = timeout
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
            async with asyncio.timeout(timeout):
                ends: set[asyncio.Future[Any]] = {self._connack, self._closed}
                done, _ = await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            self.abort("no CONNACK")
            raise LinkError(f"no CONNACK from {self._host}:{self._port} within {timeout:g} s") \
                from None
        if self._connack in done:
            return self._connack.result()          # raises LinkError for a refusal
        self.abort("closed before CONNACK")
        raise LinkError(self._before_connack_reason())

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                properties: Properties | None = None) -> int:
        """Queue a QoS 1 PUBLISH; returns its packet id (``on_puback`` gets the same)."""
        if self._closed.done():
            raise LinkError(self._closed.result(), connected=True)
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish failed: {mqtt.error_string(info.rc)}", connected=True)
        return info.mid

    async def subscribe(self, topic_filter: str, seconds: float) -> list[ReasonCode]:
        """SUBSCRIBE at QoS 1 and wait for the SUBACK's reason codes."""
        rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {mqtt.error_string(rc)}", connected=True)
        future = self._suback[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                reasons: list[ReasonCode] = await future
                return reasons
        finally:
            self._suback.pop(mid, None)

    def ack(self, mid: int) -> None:
        """PUBACK a received QoS 1 message (manual acknowledgement, in arrival order)."""
        if self.connected:
            self._client.ack(mid, 1)

    async def watch(self) -> NoReturn:
        """Keep the connection alive (paho's keepalive, the silence watchdog) until it ends;
        then raise ``LinkError`` with the reason."""
        tick = min(0.5, self._keepalive / 20) if self._keepalive > 0 else 0.5
        limit = SILENCE_FACTOR * self._keepalive
        while True:
            await asyncio.wait({self._closed}, timeout=tick)
            if self._closed.done():
                raise LinkError(self._closed.result(), connected=True)
            self._client.loop_misc()
            silent = time.monotonic() - self.last_in
            if self._keepalive > 0 and silent > limit and not self._closed.done():
                self.abort(f"nothing received from the broker for {silent:.1f} s "
                           f"(keepalive {self._keepalive} s)")

    async def disconnect(self, seconds: float) -> None:
        """A normal DISCONNECT (the broker then discards the will), then close."""
        if self.connected:
            self._client.disconnect()
            try:
                async with asyncio.timeout(seconds):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                pass
        self.abort("disconnected")

    def abort(self, reason: str) -> None:
        """Close the socket now, without DISCONNECT (the broker publishes the will)."""
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
            self._loop.add_writer(sock, self._writable)

    def _cb_unregister_write(self, _c: mqtt.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unregister_write, sock)

    def _unregister_write(self, sock: socket.socket) -> None:
        if self._writing and sock is self._sock:
            self._writing = False
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        self.last_in = time.monotonic()
        self._client.loop_read()
        # TLS may hold decrypted bytes the selector cannot see: read them now.
        for _ in range(10_000):
            sock = self._client.socket()
            if sock is None or sock is not self._sock or not isinstance(sock, ssl.SSLSocket) \
                    or sock.pending() == 0:
                break
            self._client.loop_read()

    def _writable(self) -> None:
        self._client.loop_write()

    def _cb_connect(self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, properties: Properties | None) -> None:
        if self._connack.done():
            return
        if reason.is_failure:
            self._connack.set_exception(LinkError(
                f"the broker refused the connection: {reason} (0x{reason.value:02x})"))
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)
        self._connack.set_result(ConnectInfo(flags.session_present, int(receive_maximum)))

    def _cb_disconnect(self, _c: mqtt.Client, _u: Any, flags: mqtt.DisconnectFlags,
                       reason: ReasonCode, _p: Properties | None) -> None:
        if flags.is_disconnect_packet_from_server:
            text = f"the broker disconnected us: {reason} (0x{reason.value:02x})"
        else:
            text = f"connection lost: {self._capture.last or reason}"
        self._in_loop(self._set_closed, text)

    def _set_closed(self, text: str) -> None:
        if not self._closed.done():
            self._closed.set_result(text)
        if self._connack.done():
            return
        self._connack.set_exception(LinkError(self._before_connack_reason()))
        self._connack.exception()    # retrieved: connect() reports it from _closed

    def _before_connack_reason(self) -> str:
        detail = self._capture.last or (self._closed.result() if self._closed.done() else "")
        if "SSL" in detail or "alert" in detail:
            # TLS 1.3: the broker checks our certificate after our side of the handshake has
            # finished, so its refusal (an alert) arrives while we wait for CONNACK.
            alert = detail.rsplit("]", 1)[-1].split("(_ssl")[0].strip() or detail
            return f"TLS handshake failed: the broker refused our certificate ({alert})"
        return f"connection closed before CONNACK: {detail or 'no reason given'}"

    def _cb_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        try:
            self._on_puback(mid, reason)
        except Exception:
            log.exception("%s: PUBACK handler failed", self.name)

    def _cb_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.last_in = time.monotonic()
        try:
            self._on_message(message)
        except Exception:
            log.exception("%s: message handler failed", self.name)

    def _cb_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, reasons: list[ReasonCode],
                      _p: Properties | None) -> None:
        future = self._suback.get(mid)
        if future is not None and not future.done():
            future.set_result(reasons)
