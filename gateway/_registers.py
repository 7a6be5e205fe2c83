"""Modbus register arithmetic: values <-> 16-bit registers, and merging reads into requests.

Pure functions, no I/O. The driver (``gateway.drivers._modbus``) decodes with ``decode`` and plans
its requests with ``plan_reads``; the simulator (``gateway.sim._modbus_sim``) encodes with
``encode``.

Orders: ``word_order`` is the order of the 16-bit registers of a multi-register value ("big":
most significant register first, the Modbus convention for e.g. IEEE 754 float32 in two
registers); ``byte_order`` is the order of the two bytes inside each register ("big": high byte
first, as the Modbus Application Protocol V1.1b3 §4.2 puts register data on the wire).

Request limits: a Read Holding Registers (FC 0x03) or Read Input Registers (FC 0x04) request
asks for 1 to 125 (0x7D) registers (Modbus Application Protocol Specification V1.1b3, §6.3
and §6.4).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ._model import PointConfig

__all__ = [
    "FUNCTION_CODES",
    "MAX_READ_REGISTERS",
    "ReadBlock",
    "block_registers",
    "decode",
    "encode",
    "plan_reads",
]

#: Largest quantity of registers one FC 0x03/0x04 request may ask for (MODBUS Application
#: Protocol Specification V1.1b3, §6.3 / §6.4: "Quantity of Registers 1 to 125 (0x7D)").
MAX_READ_REGISTERS = 125

#: Point ``function`` -> Modbus function code (V1.1b3 §6.3 Read Holding Registers = 0x03,
#: §6.4 Read Input Registers = 0x04).
FUNCTION_CODES = {"holding": 3, "input": 4}

# type -> (registers, struct format or None for integers, signed)
_TYPES: dict[str, tuple[int, str | None, bool]] = {
    "int16": (1, None, True),
    "uint16": (1, None, False),
    "int32": (2, None, True),
    "uint32": (2, None, False),
    "int64": (4, None, True),
    "uint64": (4, None, False),
    "float32": (2, ">f", True),
    "float64": (4, ">d", True),
}


def _layout(point: PointConfig) -> tuple[int, str | None, bool]:
    try:
        return _TYPES[point.type]
    except KeyError:
        raise ValueError(f"point {point.code!r}: unknown register type {point.type!r}") from None


def _check_order(point: PointConfig) -> None:
    for name, order in (("word_order", point.word_order), ("byte_order", point.byte_order)):
        if order not in ("big", "little"):
            raise ValueError(f"point {point.code!r}: {name} must be big or little, not {order!r}")


def _to_bytes(point: PointConfig, regs: Sequence[int]) -> bytes:
    """Registers as read -> the value's bytes, most significant first."""
    words = list(regs) if point.word_order == "big" else list(reversed(regs))
    out = bytearray()
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise ValueError(f"point {point.code!r}: register value {w!r} is not 16-bit")
        hi, lo = w >> 8, w & 0xFF
        out += bytes((hi, lo)) if point.byte_order == "big" else bytes((lo, hi))
    return bytes(out)


def _from_bytes(point: PointConfig, data: bytes) -> list[int]:
    """The value's bytes, most significant first -> registers in wire order."""
    words = []
    for i in range(0, len(data), 2):
        hi, lo = data[i], data[i + 1]
        words.append(hi << 8 | lo if point.byte_order == "big" else lo << 8 | hi)
    return words if point.word_order == "big" else list(reversed(words))


def decode(point: PointConfig, regs: Sequence[int]) -> float:
    """The scaled value of ``point`` from its registers (as read, in wire order).

    Raises ValueError for a wrong register count, an unknown type/order, or a float register
    holding NaN or an infinity (the meter has no valid value; the caller marks the point bad).
    """
    count, fmt, signed = _layout(point)
    _check_order(point)
    if len(regs) != count:
        raise ValueError(
            f"point {point.code!r}: {point.type} needs {count} registers, got {len(regs)}"
        )
    data = _to_bytes(point, regs)
    raw: float
    if fmt is None:
        raw = int.from_bytes(data, "big", signed=signed)
    else:
        raw = struct.unpack(fmt, data)[0]
        if not math.isfinite(raw):
            raise ValueError(f"point {point.code!r}: register holds {raw!r}")
    return raw * point.scale


def encode(point: PointConfig, value: float) -> list[int]:
    """The registers (wire order) that ``decode`` turns back into ``value``.

    Integers are rounded to the nearest raw step (``value / scale``); a value outside the
    type's range raises ValueError. Float types may encode NaN/inf (to simulate a bad meter).
    """
    count, fmt, signed = _layout(point)
    _check_order(point)
    if point.scale == 0:
        raise ValueError(f"point {point.code!r}: scale 0 cannot be encoded")
    raw = value / point.scale if math.isfinite(value) else value
    if fmt is None:
        if not math.isfinite(raw):
            raise ValueError(f"point {point.code!r}: {value!r} cannot be an integer register")
        bits = 16 * count
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        # an int with scale 1 stays exact (a float cannot hold every 64-bit integer)
        n = value if isinstance(value, int) and point.scale == 1 else round(raw)
        if not lo <= n <= hi:
            raise ValueError(f"point {point.code!r}: {value!r} out of range for {point.type}")
        data = n.to_bytes(2 * count, "big", signed=signed)
    else:
        try:
            data = struct.pack(fmt, raw)
        except OverflowError:
            msg = f"point {point.code!r}: {value!r} out of range for {point.type}"
            raise ValueError(msg) from None
    return _from_bytes(point, data)


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers from ``start`` with ``function`` ("holding" or
    "input"), covering ``points`` (each lies wholly inside the block)."""

    function: str
    start: int
    count: int
    points: tuple[PointConfig, ...]

    @property
    def function_code(self) -> int:
        return FUNCTION_CODES[self.function]


def _span(point: PointConfig) -> tuple[int, int]:
    if point.register is None:
        raise ValueError(f"point {point.code!r}: a Modbus point needs a register")
    if point.function not in FUNCTION_CODES:
        raise ValueError(f"point {point.code!r}: function must be holding or input")
    count = _layout(point)[0]
    if point.register < 0 or point.register + count > 0x10000:
        raise ValueError(f"point {point.code!r}: register {point.register} outside 0..65535")
    return point.register, point.register + count


def plan_reads(
    points: Sequence[PointConfig],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_gap: int = 8,
    merge: bool = True,
) -> list[ReadBlock]:
    """Group ``points`` into as few read requests as the limits allow.

    Points are grouped by function (holding = FC 3, input = FC 4), sorted by address, and
    merged while the next point starts at most ``max_gap`` unused registers after the current
    block's end (overlapping points merge too) and the block stays within ``max_registers``.
    ``merge=False`` gives one request per point (a baseline for benchmarks). Blocks come out
    holding before input, by start address.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS:
        raise ValueError(f"max_registers must be 1..{MAX_READ_REGISTERS}, not {max_registers}")
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, not {max_gap}")
    spans = [(p.function, *_span(p), p) for p in points]
    for _, start, end, p in spans:
        if end - start > max_registers:
            raise ValueError(f"point {p.code!r} needs {end - start} registers > {max_registers}")
    if not merge:
        return [ReadBlock(f, s, e - s, (p,)) for f, s, e, p in spans]
    order = {name: i for i, name in enumerate(FUNCTION_CODES)}
    spans.sort(key=lambda x: (order[x[0]], x[1], -x[2]))
    blocks: list[ReadBlock] = []
    cur: tuple[str, int, int, list[PointConfig]] | None = None
    for func, start, end, p in spans:
        if cur is not None:
            c_func, c_start, c_end, c_points = cur
            if (
                func == c_func
                and start - c_end <= max_gap
                and max(end, c_end) - c_start <= max_registers
            ):
                cur = (c_func, c_start, max(end, c_end), [*c_points, p])
                continue
            blocks.append(ReadBlock(c_func, c_start, c_end - c_start, tuple(c_points)))
        cur = (func, start, end, [p])
    if cur is not None:
        blocks.append(ReadBlock(cur[0], cur[1], cur[2] - cur[1], tuple(cur[3])))
    return blocks


def block_registers(
    block: ReadBlock, regs: Sequence[int]
) -> Iterator[tuple[PointConfig, Sequence[int]]]:
    """Each point of ``block`` with its own slice of the block's registers ``regs``."""
    if len(regs) != block.count:
        raise ValueError(f"block at {block.start} expects {block.count} registers, got {len(regs)}")
    for p in block.points:
        start, end = _span(p)
        yield p, regs[start - block.start : end - block.start]
