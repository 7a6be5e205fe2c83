"""A minimal MQTT 5 publisher on asyncio streams, for holding thousands of TLS connections in
one process (bench/bench_fleet.py).

paho-mqtt gives every client its own socket loop, buffers and callback machinery; thousands of
them in one process cost more memory and CPU than the simulated gateways are worth. A gateway in
the fleet benchmark only needs: CONNECT (with a will), PUBLISH at QoS 1, PUBACK, PINGREQ and
DISCONNECT. Those packets are written here from the MQTT 5.0 specification (OASIS Standard,
7 March 2019; section numbers beside each encoder), on ``asyncio.open_connection`` with an
``ssl.SSLContext`` that carries the gateway's own certificate.

Not implemented (not needed by a publisher that waits for each acknowledgement it cares about):
QoS 2, subscriptions, topic aliases, AUTH, incoming PUBLISH (the broker sends none: no
subscription), resending unacknowledged messages after a reconnection.

The codec functions are pure; :class:`LiteConnection` is the I/O edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "LiteConnection",
    "MqttLiteError",
    "connect_packet",
    "decode_varint",
    "disconnect_packet",
    "encode_varint",
    "publish_packet",
]

log = logging.getLogger(__name__)

# Control packet types (MQTT 5.0, 2.1.2, Table 2-1).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
# Property identifiers (MQTT 5.0, 2.2.2.2, Table 2-4).
PROP_SESSION_EXPIRY = 0x11         # four byte integer
PROP_RECEIVE_MAXIMUM = 0x21        # two byte integer
PROTOCOL_LEVEL = 5                 # MQTT 5.0, 3.1.2.2
FAILURE = 0x80                     # reason codes from 0x80 are failures (MQTT 5.0, 2.4)
_VARINT_MAX = 268_435_455          # four bytes of variable byte integer (MQTT 5.0, 1.5.5)


class MqttLiteError(ConnectionError):
    """The connection failed, was refused (``reason`` code) or was closed by the broker."""

    def __init__(self, message: str, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- codec (pure)

def encode_varint(n: int) -> bytes:
    """A Variable Byte Integer (MQTT 5.0, 1.5.5): 7 bits a byte, low first, bit 7 = more."""
    if not 0 <= n <= _VARINT_MAX:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(data: bytes, at: int = 0) -> tuple[int, int]:
    """(value, offset after it) of the Variable Byte Integer at ``data[at:]``."""
    value, shift = 0, 0
    for i in range(4):
        if at + i >= len(data):
            raise ValueError("truncated variable byte integer")
        byte = data[at + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at + i + 1
        shift += 7
    raise ValueError("variable byte integer longer than 4 bytes")


def _text(s: str) -> bytes:
    """A UTF-8 Encoded String (MQTT 5.0, 1.5.4): two-byte length, then the bytes."""
    raw = s.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def _binary(b: bytes) -> bytes:
    """Binary Data (MQTT 5.0, 1.5.6): two-byte length, then the bytes."""
    return struct.pack(">H", len(b)) + b


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    """Fixed header (MQTT 5.0, 2.1.1) + ``body``."""
    return bytes([(kind << 4) | flags]) + encode_varint(len(body)) + body


def connect_packet(client_id: str, *, keepalive: int, session_expiry: int = 0,
                   will: tuple[str, bytes] | None = None, will_retain: bool = True,
                   will_qos: int = 1) -> bytes:
    """CONNECT (MQTT 5.0, 3.1) with Clean Start; the user name comes from the certificate
    (the broker's ``use_identity_as_username``), so none is sent."""
    flags = 0x02                                   # Clean Start (3.1.2.4)
    payload = _text(client_id)
    if will is not None:
        flags |= 0x04 | (will_qos << 3) | (0x20 if will_retain else 0)   # 3.1.2.5-3.1.2.7
        payload += encode_varint(0) + _text(will[0]) + _binary(will[1])  # 3.1.3.2-3.1.3.4
    props = bytes([PROP_SESSION_EXPIRY]) + struct.pack(">I", session_expiry)
    variable = (_text("MQTT") + bytes([PROTOCOL_LEVEL, flags]) + struct.pack(">H", keepalive)
                + encode_varint(len(props)) + props)
    return _packet(CONNECT, 0, variable + payload)


def publish_packet(topic: str, payload: bytes, packet_id: int, *, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1 (MQTT 5.0, 3.3): flags QoS 1 (+ RETAIN), topic, packet id, no
    properties."""
    flags = 0x02 | (0x01 if retain else 0)
    return _packet(PUBLISH, flags,
                   _text(topic) + struct.pack(">H", packet_id) + encode_varint(0) + payload)


def disconnect_packet() -> bytes:
    """DISCONNECT with reason 0x00 Normal disconnection (MQTT 5.0, 3.14.2.1: may be omitted):
    the broker does not publish the will."""
    return _packet(DISCONNECT, 0, b"")


PINGREQ_PACKET = _packet(PINGREQ, 0, b"")       # MQTT 5.0, 3.12


@dataclass(frozen=True, slots=True)
class Ack:
    """A PUBACK: its packet id and reason code (0x00 Success, 0x10 No matching subscribers;
    from 0x80 a failure such as 0x87 Not authorized)."""

    packet_id: int
    reason: int


def parse_puback(body: bytes) -> Ack:
    """MQTT 5.0, 3.4.2: packet id; reason code only when the remaining length is over 2."""
    if len(body) < 2:
        raise ValueError("PUBACK shorter than its packet identifier")
    packet_id = struct.unpack_from(">H", body)[0]
    return Ack(packet_id, body[2] if len(body) > 2 else 0)


# ----------------------------------------------------------------------------- the I/O edge

class LiteConnection:
    """One MQTT 5 connection over TLS that publishes at QoS 1.

    ``connect()`` opens TCP + TLS, sends CONNECT and waits for CONNACK. ``publish()`` writes a
    PUBLISH and returns its packet id at once; ``on_ack(packet_id, reason, monotonic_time)`` is
    called from the read loop when its PUBACK arrives. A ping is sent when nothing was written
    for ``keepalive * 0.75`` seconds. ``closed`` is set when the connection ends (``error``
    says why, None after our own ``close()``).
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext, client_id: str, *,
                 keepalive: int = 60, will: tuple[str, bytes] | None = None,
                 on_ack: Callable[[int, int, float], None] | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.client_id = client_id
        self.keepalive = keepalive
        self.will = will
        self.on_ack = on_ack
        self.closed = asyncio.Event()
        self.error: str | None = None
        self.receive_maximum = 65_535          # until CONNACK says otherwise (3.2.2.3.3)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._next_id = 0
        self._last_write = 0.0

    async def connect(self, within: float = 30.0) -> None:
        """TCP, TLS, CONNECT, CONNACK within ``within`` seconds (else ``TimeoutError``)."""
        async with asyncio.timeout(within):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.tls, server_hostname=self.host,
                ssl_handshake_timeout=within)
            self._write(connect_packet(self.client_id, keepalive=self.keepalive,
                                       will=self.will))
            kind, _flags, body = await self._read_packet()
        if kind != CONNACK or len(body) < 2:
            raise MqttLiteError(f"{self.client_id}: expected CONNACK, got packet type {kind}")
        if body[1] >= FAILURE:
            raise MqttLiteError(f"{self.client_id}: CONNACK reason 0x{body[1]:02x}", body[1])
        self._connack_properties(body)
        self._tasks = [asyncio.create_task(self._read_loop(), name=f"lite[{self.client_id}].read"),
                       asyncio.create_task(self._ping_loop(), name=f"lite[{self.client_id}].ping")]

    def _connack_properties(self, body: bytes) -> None:
        length, at = decode_varint(body, 2)
        end = at + length
        while at < end:                       # only Receive Maximum matters here
            ident = body[at]
            at += 1
            if ident == PROP_RECEIVE_MAXIMUM:
                self.receive_maximum = struct.unpack_from(">H", body, at)[0]
                return
            at = _skip_property(body, ident, at)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Write one QoS 1 PUBLISH; its packet id (1..65535, wrapping)."""
        if self.closed.is_set():
            raise MqttLiteError(f"{self.client_id}: connection closed: {self.error}")
        self._next_id = self._next_id % 65_535 + 1
        self._write(publish_packet(topic, payload, self._next_id, retain=retain))
        return self._next_id

    def _write(self, data: bytes) -> None:
        assert self._writer is not None
        self._writer.write(data)
        self._last_write = time.monotonic()

    async def drain(self) -> None:
        if self._writer is not None:
            await self._writer.drain()

    async def _read_packet(self) -> tuple[int, int, bytes]:
        assert self._reader is not None
        first = await self._reader.readexactly(1)
        length, shift = 0, 0
        for _ in range(4):
            byte = (await self._reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        else:
            raise MqttLiteError(f"{self.client_id}: malformed remaining length")
        body = await self._reader.readexactly(length) if length else b""
        return first[0] >> 4, first[0] & 0x0F, body

    async def _read_loop(self) -> None:
        try:
            while True:
                kind, _flags, body = await self._read_packet()
                if kind == PUBACK:
                    ack = parse_puback(body)
                    if self.on_ack is not None:
                        self.on_ack(ack.packet_id, ack.reason, time.monotonic())
                elif kind == DISCONNECT:
                    reason = body[0] if body else 0
                    self._end(f"DISCONNECT from the broker, reason 0x{reason:02x}")
                    return
                elif kind != PINGRESP:
                    self._end(f"unexpected packet type {kind}")
                    return
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError) as exc:
            self._end(f"read failed: {type(exc).__name__}: {exc}")

    async def _ping_loop(self) -> None:
        period = max(1.0, self.keepalive * 0.75)
        while not self.closed.is_set():
            idle = time.monotonic() - self._last_write
            if idle >= period:
                try:
                    self._write(PINGREQ_PACKET)
                except (OSError, RuntimeError) as exc:
                    self._end(f"ping failed: {exc}")
                    return
                idle = 0.0
            await asyncio.sleep(period - idle)

    def _end(self, error: str | None) -> None:
        if not self.closed.is_set():
            self.error = error
            self.closed.set()
            if self._writer is not None:
                self._writer.close()

    async def close(self) -> None:
        """DISCONNECT (normal: no will), then close the socket."""
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        if self._writer is not None and not self.closed.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self._write(disconnect_packet())
                async with asyncio.timeout(5):
                    await self._writer.drain()
        self._end(None)
        if self._writer is not None:
            with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
                async with asyncio.timeout(5):
                    await self._writer.wait_closed()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def _skip_property(body: bytes, ident: int, at: int) -> int:
    """The offset after property ``ident``'s value at ``at`` (MQTT 5.0, 2.2.2.2, Table 2-4)."""
    byte_props = {0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A}
    two_byte = {0x13, 0x21, 0x22, 0x23}
    four_byte = {0x02, 0x11, 0x18, 0x27}
    if ident in byte_props:
        return at + 1
    if ident in two_byte:
        return at + 2
    if ident in four_byte:
        return at + 4
    if ident == 0x0B:                                   # subscription identifier: varint
        return decode_varint(body, at)[1]
    if ident == 0x26:                                   # user property: string pair
        at += 2 + struct.unpack_from(">H", body, at)[0]
    # the rest are strings or binary data (two-byte length)
    length: int = struct.unpack_from(">H", body, at)[0]
    return at + 2 + length
