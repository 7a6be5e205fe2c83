"""Simulated Modbus meters, over TCP (MBAP) or RTU (a serial device such as a socat pty).

Register values are computed on every request from ``point_value(point, clock())`` and
``gateway._registers.encode``, so a test knows what any register holds at any instant. Each
point lives in its own function's table (holding → FC 3, input → FC 4); registers no point
covers read 0.

Why our own server and not pymodbus': the simulator must misbehave on purpose and reliably —
stay silent for one unit id while answering others on the same link, send a frame with a wrong
CRC, send a corrupt MBAP header — and pymodbus' server (3.16, SimData/SimDevice) only produces
well-formed answers. Modbus framing is small enough to write here: the pure functions below
(``crc16``, ``answer_pdu``, ``split_rtu_requests``) carry the protocol and the servers are thin
asyncio edges.

Faults (``SimMeter.fault``):

- ``silent``: never answers;
- ``garble``: RTU — the right answer with its CRC inverted; TCP — the right answer with a
  non-zero MBAP protocol identifier and the PDU's last byte cut off;
- ``exception``: exception response, code 2 (ILLEGAL DATA ADDRESS).

References: MODBUS Application Protocol Specification V1.1b3 (2012) — §6.3/§6.4 FC 3/4,
§7 exception responses and codes; MODBUS Messaging on TCP/IP Implementation Guide V1.0b (2006)
§3.1.3 MBAP header; MODBUS over Serial Line Specification V1.02 (2006) §2.5.1.2 and
Appendix B CRC-16 (initial 0xFFFF, polynomial 0xA001 reflected, low byte sent first).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import os
import termios
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway._model import PointConfig
from gateway._registers import FUNCTION_CODES, MAX_READ_REGISTERS, encode

from ._values import SimMeter, point_value

__all__ = [
    "SimBank",
    "answer_pdu",
    "crc16",
    "serve_modbus_rtu",
    "serve_modbus_tcp",
    "split_rtu_requests",
]

log = logging.getLogger(__name__)

# Exception codes, Modbus Application Protocol V1.1b3 §7.
ILLEGAL_FUNCTION = 0x01
ILLEGAL_DATA_ADDRESS = 0x02
ILLEGAL_DATA_VALUE = 0x03
GATEWAY_TARGET_FAILED = 0x0B   # a TCP gateway's answer for a unit id behind it that is silent

Clock = Callable[[], float]


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS of ``data`` (Serial Line V1.02 Appendix B: init 0xFFFF, poly 0xA001).

    The frame carries it low byte first: ``data + crc.to_bytes(2, "little")``.
    """
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _exception_pdu(function: int, code: int) -> bytes:
    return bytes((function | 0x80, code))  # V1.1b3 §7: function code + 0x80, exception code


@dataclass(slots=True)
class _Table:
    """One meter's points of one function, sorted by register."""

    starts: list[int] = field(default_factory=list)
    points: list[PointConfig] = field(default_factory=list)


class SimBank:
    """The simulated meters on one link, by unit id, and their register tables."""

    def __init__(
        self, meters: Sequence[SimMeter], clock: Clock = time.time, *, strict: bool = False
    ) -> None:
        self.clock = clock
        self.strict = strict
        self.meters: dict[int, SimMeter] = {}
        self._tables: dict[tuple[int, int], _Table] = {}
        for m in meters:
            unit = int(m.address)
            if not 1 <= unit <= 247:  # Serial Line V1.02 §2.2: individual addresses 1..247
                raise ValueError(f"simulated Modbus meter address {m.address!r} not in 1..247")
            if unit in self.meters:
                raise ValueError(f"two simulated meters with address {unit}")
            self.meters[unit] = m
            for p in sorted((p for p in m.points if p.register is not None),
                            key=lambda p: p.register or 0):
                table = self._tables.setdefault((unit, FUNCTION_CODES[p.function]), _Table())
                table.starts.append(p.register or 0)
                table.points.append(p)

    def registers(self, unit: int, function: int, start: int, count: int) -> list[int] | None:
        """Registers ``start .. start+count-1`` of ``unit`` for FC ``function`` right now;
        None when the bank is ``strict`` and the range touches no point."""
        regs = [0] * count
        table = self._tables.get((unit, function))
        if table is None:
            return None if self.strict else regs
        now = self.clock()
        end = start + count
        # a point starts at most 3 registers before the range and still overlaps it (int64)
        i = bisect.bisect_left(table.starts, start - 3)
        touched = False
        while i < len(table.points) and table.starts[i] < end:
            p = table.points[i]
            i += 1
            base = p.register or 0
            if base + p.register_count <= start:
                continue
            touched = True
            try:
                words = encode(p, point_value(p, now))
            except ValueError as exc:
                log.warning("simulated point %s cannot be encoded: %s", p.code, exc)
                continue
            for k, w in enumerate(words):
                if start <= base + k < end:
                    regs[base + k - start] = w
        return None if self.strict and not touched else regs


def answer_pdu(bank: SimBank, unit: int, pdu: bytes) -> bytes | None:
    """The response PDU for request ``pdu`` to ``unit``, or None for no answer at all."""
    meter = bank.meters.get(unit)
    if meter is None or meter.fault == "silent" or not pdu:
        return None
    function = pdu[0]
    if meter.fault == "exception":
        return _exception_pdu(function, ILLEGAL_DATA_ADDRESS)
    if function not in FUNCTION_CODES.values():
        return _exception_pdu(function, ILLEGAL_FUNCTION)
    if len(pdu) != 5:
        return _exception_pdu(function, ILLEGAL_DATA_VALUE)
    start = int.from_bytes(pdu[1:3], "big")
    count = int.from_bytes(pdu[3:5], "big")
    if not 1 <= count <= MAX_READ_REGISTERS:  # V1.1b3 §6.3: quantity 1..125, else code 3
        return _exception_pdu(function, ILLEGAL_DATA_VALUE)
    if start + count > 0x10000:                # V1.1b3 §6.3: address range, else code 2
        return _exception_pdu(function, ILLEGAL_DATA_ADDRESS)
    regs = bank.registers(unit, function, start, count)
    if regs is None:                           # strict bank: nothing mapped there
        return _exception_pdu(function, ILLEGAL_DATA_ADDRESS)
    body = b"".join(r.to_bytes(2, "big") for r in regs)
    return bytes((function, len(body))) + body


# ---- RTU ----------------------------------------------------------------------------------


def _rtu_request_length(buf: bytes) -> int | None:
    """Length of the RTU request at the start of ``buf`` (≥ 2 bytes): known from the function
    code for the usual requests; None when the length field has not arrived yet; 0 when the
    function code does not tell (then the CRC has to find the end)."""
    function = buf[1]
    if function in (1, 2, 3, 4, 5, 6):        # address + fc + 4 bytes + crc
        return 8
    if function in (15, 16):                  # ... + quantity(2) + byte count(1) + data + crc
        return 9 + buf[6] if len(buf) >= 7 else None
    return 0


def _next_valid_frame(buf: bytes, start: int) -> int | None:
    """Offset of the first complete, CRC-valid request of known length at or after start."""
    for j in range(start, len(buf) - 3):
        n = _rtu_request_length(buf[j:])
        if n and len(buf) - j >= n and crc16(buf[j:j + n - 2]) == int.from_bytes(
                buf[j + n - 2:j + n], "little"):
            return j
    return None


def split_rtu_requests(buf: bytes) -> tuple[list[bytes], bytes]:
    """Cut complete, CRC-valid request frames off ``buf``; return them and the rest.

    Bytes that cannot start a valid frame are dropped one at a time (re-synchronising after
    line noise). A pty has no inter-frame timing, so frames are delimited by length and CRC.
    """
    frames: list[bytes] = []
    i = 0
    while len(buf) - i >= 4:
        n = _rtu_request_length(buf[i:])
        if n is None:
            break
        if n == 0:  # unknown function: the shortest prefix whose last two bytes are its CRC
            found = next((k for k in range(4, min(256, len(buf) - i) + 1)
                          if crc16(buf[i:i + k - 2]) == int.from_bytes(buf[i + k - 2:i + k],
                                                                        "little")), None)
            if found is None:
                later = _next_valid_frame(buf, i + 1)
                if later is not None:
                    i = later
                    continue
                if len(buf) - i >= 256:   # Serial Line V1.02 §2.5.1: an RTU frame ≤ 256 bytes
                    i += 1
                    continue
                break
            n = found
        if len(buf) - i < n:
            break
        frame = buf[i:i + n]
        if crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little"):
            frames.append(frame)
            i += n
        else:
            i += 1
    return frames, buf[i:]


def rtu_answer(bank: SimBank, frame: bytes) -> bytes | None:
    """The RTU response frame to a CRC-valid request frame, or None (silence)."""
    unit = frame[0]
    pdu = answer_pdu(bank, unit, frame[1:-2])  # address 0 is broadcast: no meter, no answer
    if pdu is None:
        return None
    body = bytes((unit,)) + pdu
    crc = crc16(body)
    if bank.meters[unit].fault == "garble":
        crc ^= 0xFFFF
    return body + crc.to_bytes(2, "little")


async def serve_modbus_rtu(
    meters: Sequence[SimMeter],
    *,
    device: str,
    ready: asyncio.Event | None = None,
    clock: Clock = time.time,
    strict: bool = False,
) -> None:
    """Answer as ``meters`` on the serial device ``device`` until cancelled.

    ``strict``: a read touching no simulated point gets exception 2, as many real meters
    answer for unmapped registers."""
    bank = SimBank(meters, clock, strict=strict)
    loop = asyncio.get_running_loop()
    fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    buf = b""
    flush: asyncio.TimerHandle | None = None

    def drop_partial() -> None:
        nonlocal buf
        if buf:
            log.debug("rtu sim: dropping %d stray bytes", len(buf))
        buf = b""

    def on_readable() -> None:
        nonlocal buf, flush
        try:
            data = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:   # EIO when the other side of the pty pair is gone
            log.debug("rtu sim: read failed: %s", exc)
            return
        frames, buf = split_rtu_requests(buf + data)
        for frame in frames:
            reply = rtu_answer(bank, frame)
            if reply is not None:
                try:
                    os.write(fd, reply)
                except OSError as exc:
                    log.warning("rtu sim: reply to unit %d lost: %s", frame[0], exc)
        if flush is not None:
            flush.cancel()
        # a request never pauses this long inside a frame: what is left then is noise
        flush = loop.call_later(0.2, drop_partial) if buf else None

    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        loop.add_reader(fd, on_readable)
        if ready is not None:
            ready.set()
        await asyncio.Future()   # until cancelled
    finally:
        loop.remove_reader(fd)
        if flush is not None:
            flush.cancel()
        os.close(fd)


# ---- TCP ----------------------------------------------------------------------------------


async def _serve_tcp_connection(
    bank: SimBank, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            header = await reader.readexactly(7)   # MBAP: tid(2) pid(2) length(2) unit(1)
            length = int.from_bytes(header[4:6], "big")
            if not 2 <= length <= 254:             # unit + PDU (≤ 253 bytes, V1.1b3 §4.1)
                log.debug("tcp sim: bad MBAP length %d, closing", length)
                return
            pdu = await reader.readexactly(length - 1)
            if header[2:4] != b"\0\0":             # protocol identifier 0 = Modbus
                continue
            unit = header[6]
            if unit in bank.meters:
                answer = answer_pdu(bank, unit, pdu)
            else:
                answer = _exception_pdu(pdu[0], GATEWAY_TARGET_FAILED) if pdu else None
            if answer is None:
                continue
            mbap = header[0:2] + b"\0\0" + (len(answer) + 1).to_bytes(2, "big") + header[6:7]
            if unit in bank.meters and bank.meters[unit].fault == "garble":
                mbap = mbap[0:2] + b"\x5a\xa5" + mbap[4:]
                answer = answer[:-1]
            writer.write(mbap + answer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def serve_modbus_tcp(
    meters: Sequence[SimMeter],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: asyncio.Event | None = None,
    bound: list[int] | None = None,
    clock: Clock = time.time,
    strict: bool = False,
) -> None:
    """Answer as ``meters`` (by unit id) on a Modbus TCP server at ``host:port`` until
    cancelled. ``bound`` receives the port actually bound; ``ready`` is set when serving.
    A unit id no meter has gets exception 0x0B, as a TCP-to-RTU gateway answers.
    ``strict`` as for ``serve_modbus_rtu``."""
    bank = SimBank(meters, clock, strict=strict)
    handlers: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers[task] = writer
        try:
            await _serve_tcp_connection(bank, reader, writer)
        finally:
            handlers.pop(task, None)

    server = await asyncio.start_server(on_connect, host, port)
    try:
        if bound is not None:
            bound.append(server.sockets[0].getsockname()[1])
        if ready is not None:
            ready.set()
        await server.serve_forever()
    finally:
        server.close()
        # closing a connection ends its handler normally (cancelling a handler task makes
        # asyncio's stream callback log a CancelledError in Python 3.11)
        tasks = list(handlers)
        for writer in handlers.values():
            writer.transport.abort()
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        await server.wait_closed()
