"""DL/T 645-2007 codec: frames, data identifiers and BCD values. Pure functions, no I/O.

Our own codec, not the PyPI package ``dlt645`` (see docs/dlt645-evaluation.md: its
``set_address`` sends the address high byte first and ``read_address`` prints it reversed, and
every failure comes back as ``None``).

Frame (DL/T 645-2007 clause 4.1)::

    [FE FE FE FE]  68  A0 A1 A2 A3 A4 A5  68  C  L  DATA(L bytes, each +33H)  CS  16

* address: 6 bytes BCD, A0 (the two lowest digits) first; we write it as the 12-digit string
  printed on the nameplate (``"000012345678"``). ``AA`` is the wildcard byte (clause 4.1.2).
* C (clause 4.1.3): D7 direction (1 = from the meter), D6 abnormal reply, D5 follow-up frame,
  D4..D0 function. Read data 11H -> 91H (normal) / D1H (error, data = ERR byte); read address
  13H -> 93H (data = the meter's 6 address bytes).
* DATA: every byte is sent +33H (clause 4.1.5); a read request carries the 4-byte data
  identifier DI0..DI3, lowest byte first (DI ``"00010000"`` is sent ``33 33 34 33``).
* CS: sum of all bytes from the first 68H to the end of DATA, modulo 256 (clause 4.1.6).
* Up to four FE bytes may precede a frame to wake the receiver (clause 4.1, "前导字节").

Values are BCD, lowest byte first, in the format the data table gives for the identifier
(``XXXXXX.XX`` = 8 digits, 2 decimals, 4 bytes). For signed quantities the top bit of the
highest byte is the sign (1 = negative) (DL/T 645-2007 appendix A, notes to tables A.1/A.3).

Block identifiers (DI2 or DI1 = FFH, e.g. ``0201FF00`` = voltages of phases A, B, C) return
several values; a point selects one with ``field`` (``"a"``, ``"b"``, ``"c"``, ``"total"``,
``"t1"`` … tariffs), see :data:`DATA_ITEMS`.

Exceptions::

    Dlt645Error(ValueError)
    ├── FrameError        corrupt or unexpected frame (.skip: bytes of the buffer to drop)
    └── ErrorReply        the meter answered D1H (.code: the ERR byte, appendix C bits)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BROADCAST_ADDRESS",
    "C_READ",
    "C_READ_ADDRESS",
    "C_READ_ADDRESS_REPLY",
    "C_READ_ERROR",
    "C_READ_REPLY",
    "DATA_ITEMS",
    "ERR_NO_DATA",
    "ERR_OTHER",
    "DataItem",
    "Dlt645Error",
    "ErrorReply",
    "Frame",
    "FrameError",
    "bcd_to_int",
    "data_item",
    "decode_address",
    "decode_read_address_reply",
    "decode_read_reply",
    "decode_values",
    "encode_address",
    "encode_error_reply",
    "encode_frame",
    "encode_read_address_reply",
    "encode_read_address_request",
    "encode_read_reply",
    "encode_read_request",
    "encode_values",
    "error_text",
    "field_index",
    "int_to_bcd",
    "split_frame",
]

logger = logging.getLogger(__name__)

START = 0x68          # frame start character (clause 4.1)
END = 0x16            # frame end character (clause 4.1)
PREAMBLE = 0xFE       # wake-up byte before a frame (clause 4.1)
OFFSET = 0x33         # added to each data byte on the wire (clause 4.1.5)
HEADER = 10           # 68 + 6 address + 68 + C + L

C_READ = 0x11                  # read data (clause 4.1.3, table 1 function 10001)
C_READ_REPLY = 0x91            # normal reply, no follow-up
C_READ_ERROR = 0xD1            # abnormal reply to a read: data = ERR
C_READ_ADDRESS = 0x13          # read communication address (function 10011)
C_READ_ADDRESS_REPLY = 0x93
REPLY_BIT = 0x80               # D7: frame sent by the meter
ERROR_BIT = 0x40               # D6: abnormal reply
FOLLOW_BIT = 0x20              # D5: more data follows in another frame

BROADCAST_ADDRESS = "AAAAAAAAAAAA"   # wildcard address used by read-address (clause 4.1.2)

# ERR byte of an abnormal reply (DL/T 645-2007 appendix C, table C.1).
ERR_OTHER = 0x01               # D0 other error
ERR_NO_DATA = 0x02             # D1 no requested data
_ERR_BITS = (
    (0x01, "other error"),
    (0x02, "no requested data"),
    (0x04, "password error / unauthorised"),
    (0x08, "baud rate cannot be changed"),
    (0x10, "too many year time zones"),
    (0x20, "too many day time periods"),
    (0x40, "too many tariffs"),
)


class Dlt645Error(ValueError):
    """A DL/T 645 frame or value could not be used."""


class FrameError(Dlt645Error):
    """Corrupt, truncated or unexpected frame. ``skip``: how many bytes of the buffer given
    to :func:`split_frame` to drop before looking for the next frame (0 for replies that
    were well formed but not the one expected)."""

    def __init__(self, message: str, skip: int = 0) -> None:
        super().__init__(message)
        self.skip = skip


class ErrorReply(Dlt645Error):
    """The meter sent an abnormal reply; ``code`` is its ERR byte."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error reply {code:02X}H: {error_text(code)}")
        self.code = code


def error_text(code: int) -> str:
    """Names of the bits set in an ERR byte (appendix C)."""
    names = [text for bit, text in _ERR_BITS if code & bit]
    return ", ".join(names) or "unspecified"


# --------------------------------------------------------------------------- BCD


def bcd_to_int(data: bytes) -> int:
    """Unsigned BCD, lowest byte first. Raises Dlt645Error on a nibble above 9."""
    value = 0
    for byte in reversed(data):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise Dlt645Error(f"not BCD: {data.hex(' ')}")
        value = value * 100 + hi * 10 + lo
    return value


def int_to_bcd(value: int, size: int) -> bytes:
    """``size`` bytes of unsigned BCD, lowest byte first. Raises OverflowError if too large."""
    if value < 0 or value >= 100**size:
        raise OverflowError(f"{value} does not fit {size} BCD bytes")
    out = bytearray()
    for _ in range(size):
        value, pair = divmod(value, 100)
        out.append((pair // 10) << 4 | pair % 10)
    return bytes(out)


# --------------------------------------------------------------------------- data items


@dataclass(frozen=True, slots=True)
class DataItem:
    """One data identifier of appendix A: its value format and what a block carries.

    ``fmt`` is the standard's notation for one value (``"XXX.XXX"``); ``fields`` names the
    values of a block identifier (single values have ``()``); ``variable`` blocks (energy
    by tariff) return as many values as the meter has tariffs (at least one).
    """

    di: str
    name: str
    fmt: str
    unit: str
    signed: bool = False
    fields: tuple[str, ...] = ()
    variable: bool = False

    @property
    def decimals(self) -> int:
        return len(self.fmt.partition(".")[2])

    @property
    def size(self) -> int:
        """Bytes per value: two BCD digits per byte."""
        return len(self.fmt.replace(".", "")) // 2

    @property
    def count(self) -> int:
        """Values in a reply (the minimum, for variable blocks)."""
        return 1 if not self.fields else (1 if self.variable else len(self.fields))


_TARIFFS = ("total", *(f"t{i}" for i in range(1, 64)))   # up to 63 tariffs (A.1: DI1 01H..3FH)
_PHASES = ("a", "b", "c")
_TOTAL_PHASES = ("total", "a", "b", "c")


def _items() -> dict[str, DataItem]:
    items: list[DataItem] = []
    # DL/T 645-2007 appendix A, table A.1 (energy, current settlement period): DI3 = 00,
    # DI2 = kind, DI1 = 00 total / 01..3F tariff / FF block; format XXXXXX.XX, 4 bytes.
    energy = (
        ("00", "combined active energy", "kWh", True),
        ("01", "forward active energy", "kWh", False),
        ("02", "reverse active energy", "kWh", False),
        ("03", "combined reactive energy 1", "kvarh", True),
        ("04", "combined reactive energy 2", "kvarh", True),
        ("05", "quadrant I reactive energy", "kvarh", False),
        ("06", "quadrant II reactive energy", "kvarh", False),
        ("07", "quadrant III reactive energy", "kvarh", False),
        ("08", "quadrant IV reactive energy", "kvarh", False),
        ("09", "forward apparent energy", "kVAh", False),
        ("0A", "reverse apparent energy", "kVAh", False),
    )
    for kind, name, unit, signed in energy:
        items.append(DataItem(f"00{kind}0000", f"{name}, total", "XXXXXX.XX", unit, signed))
        for tariff in range(1, 5):
            items.append(DataItem(f"00{kind}{tariff:02X}00", f"{name}, tariff {tariff}",
                                  "XXXXXX.XX", unit, signed))
        items.append(DataItem(f"00{kind}FF00", f"{name}, total and tariffs", "XXXXXX.XX",
                              unit, signed, _TARIFFS, variable=True))
    # Appendix A, table A.3 (variables): DI3 = 02, DI2 = quantity, DI1 = phase / FF block.
    phase_items = (
        ("01", "voltage", "XXX.X", "V", False, _PHASES),
        ("02", "current", "XXX.XXX", "A", True, _PHASES),
        ("03", "active power", "XX.XXXX", "kW", True, _TOTAL_PHASES),
        ("04", "reactive power", "XX.XXXX", "kvar", True, _TOTAL_PHASES),
        ("05", "apparent power", "XX.XXXX", "kVA", True, _TOTAL_PHASES),
        ("06", "power factor", "X.XXX", "", True, _TOTAL_PHASES),
        ("07", "phase angle", "XXX.X", "°", False, _PHASES),
    )
    for qty, name, fmt, unit, signed, fields in phase_items:
        for index, phase in enumerate(fields):
            di1 = index if fields is _TOTAL_PHASES else index + 1   # 00 total, 01..03 A..C
            label = "total" if phase == "total" else f"phase {phase.upper()}"
            items.append(DataItem(f"02{qty}{di1:02X}00", f"{name}, {label}", fmt, unit, signed))
        items.append(DataItem(f"02{qty}FF00", f"{name}, block", fmt, unit, signed, fields))
    # Table A.3, DI2 = 80 (other variables).
    items += [
        DataItem("02800001", "neutral current", "XXX.XXX", "A", True),
        DataItem("02800002", "grid frequency", "XX.XX", "Hz"),
        DataItem("02800003", "one-minute average total active power", "XX.XXXX", "kW", True),
        DataItem("02800004", "current active demand", "XX.XXXX", "kW", True),
        DataItem("02800005", "current reactive demand", "XX.XXXX", "kvar", True),
        DataItem("02800006", "current apparent demand", "XX.XXXX", "kVA", True),
        DataItem("02800007", "meter temperature", "XXX.X", "°C", True),
        DataItem("02800008", "clock battery voltage", "XX.XX", "V"),
    ]
    return {item.di: item for item in items}


#: Data identifiers this codec can decode, by 8 upper-case hex digits (DI3 DI2 DI1 DI0).
DATA_ITEMS: dict[str, DataItem] = _items()


def data_item(di: str) -> DataItem:
    """The table entry for ``di`` (case-insensitive). Raises KeyError if unknown."""
    try:
        return DATA_ITEMS[di.upper()]
    except KeyError:
        raise KeyError(f"DL/T 645 data identifier {di!r} is not in the data table") from None


def field_index(di: str, field: str | None) -> int:
    """Position of ``field`` among the values of ``di``; single values take no field."""
    item = data_item(di)
    if not item.fields:
        if field:
            raise ValueError(f"DL/T 645 {di} carries one value; field {field!r} is not allowed")
        return 0
    if not field:
        raise ValueError(f"DL/T 645 {di} is a block; field must be one of {item.fields[:4]}…")
    try:
        return item.fields.index(field)
    except ValueError:
        raise ValueError(f"DL/T 645 {di}: unknown field {field!r}") from None


def _di_bytes(di: str) -> bytes:
    """DI as sent: DI0 first (``"00010000"`` -> ``00 00 01 00``)."""
    if len(di) != 8:
        raise ValueError(f"data identifier {di!r}: need 8 hex digits")
    return bytes.fromhex(di)[::-1]


def decode_values(di: str, payload: bytes) -> tuple[float, ...]:
    """The values of ``di`` in ``payload`` (the reply data after the 4 DI bytes, 33H removed)."""
    item = data_item(di)
    size = item.size
    if item.variable:
        if not payload or len(payload) % size or len(payload) // size > len(item.fields):
            raise Dlt645Error(f"{di}: {len(payload)} data bytes is no whole number of values")
    elif len(payload) != size * item.count:
        raise Dlt645Error(f"{di}: expected {size * item.count} data bytes, got {len(payload)}")
    values = []
    for start in range(0, len(payload), size):
        chunk = bytearray(payload[start:start + size])
        negative = item.signed and bool(chunk[-1] & 0x80)
        if item.signed:
            chunk[-1] &= 0x7F
        number = bcd_to_int(bytes(chunk)) / 10**item.decimals
        values.append(-number if negative else number)
    return tuple(values)


def encode_values(di: str, values: Sequence[float]) -> bytes:
    """BCD bytes for ``values`` of ``di`` (the inverse of :func:`decode_values`). Values are
    rounded to the format's decimals; OverflowError if one does not fit."""
    item = data_item(di)
    if item.variable:
        if not 1 <= len(values) <= len(item.fields):
            raise ValueError(f"{di}: 1..{len(item.fields)} values, got {len(values)}")
    elif len(values) != item.count:
        raise ValueError(f"{di}: {item.count} values, got {len(values)}")
    out = bytearray()
    for value in values:
        scaled = round(abs(value) * 10**item.decimals)
        if value < 0 and not item.signed:
            raise OverflowError(f"{di}: {value} is negative but the format is unsigned")
        chunk = bytearray(int_to_bcd(scaled, item.size))
        if item.signed:
            if chunk[-1] & 0x80:
                raise OverflowError(f"{value} does not fit signed {item.fmt}")
            if value < 0 and scaled:
                chunk[-1] |= 0x80
        out += chunk
    return bytes(out)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame: ``data`` has the 33H offset removed."""

    address: str
    control: int
    data: bytes

    @property
    def from_meter(self) -> bool:
        return bool(self.control & REPLY_BIT)


def encode_address(address: str) -> bytes:
    """12 digits (``A`` allowed as wildcard) -> 6 bytes, lowest first."""
    if len(address) != 12 or any(ch not in "0123456789Aa" for ch in address):
        raise ValueError(f"DL/T 645 address {address!r}: need 12 digits")
    return bytes.fromhex(address)[::-1]


def decode_address(raw: bytes) -> str:
    """6 bytes as on the wire -> the 12-digit string as printed on the meter."""
    return raw[::-1].hex().upper()


def encode_frame(address: str, control: int, data: bytes = b"", *, preamble: bool = True) -> bytes:
    """A complete frame; ``data`` is given without the 33H offset."""
    if len(data) > 255:
        raise ValueError("DL/T 645 data field longer than 255 bytes")
    body = bytearray([START, *encode_address(address), START, control, len(data)])
    body += bytes((b + OFFSET) & 0xFF for b in data)
    body += bytes([sum(body) & 0xFF, END])
    return (bytes([PREAMBLE] * 4) if preamble else b"") + bytes(body)


def encode_read_request(address: str, di: str, *, preamble: bool = True) -> bytes:
    """Read data (11H) of ``di`` from the meter at ``address``."""
    return encode_frame(address, C_READ, _di_bytes(di), preamble=preamble)


def encode_read_address_request(*, preamble: bool = True) -> bytes:
    """Read communication address (13H), sent to the wildcard address; one meter on the line."""
    return encode_frame(BROADCAST_ADDRESS, C_READ_ADDRESS, b"", preamble=preamble)


def encode_read_reply(address: str, di: str, payload: bytes, *, preamble: bool = True) -> bytes:
    """The meter's normal reply (91H): DI then the value bytes."""
    return encode_frame(address, C_READ_REPLY, _di_bytes(di) + payload, preamble=preamble)


def encode_error_reply(address: str, code: int, control: int = C_READ,
                       *, preamble: bool = True) -> bytes:
    """The meter's abnormal reply to ``control``: C | C0H, data = ERR byte."""
    return encode_frame(address, control | REPLY_BIT | ERROR_BIT, bytes([code]),
                        preamble=preamble)


def encode_read_address_reply(address: str, *, preamble: bool = True) -> bytes:
    """The meter's reply to read-address (93H): its address as data."""
    return encode_frame(address, C_READ_ADDRESS_REPLY, encode_address(address),
                        preamble=preamble)


def split_frame(buffer: bytes | bytearray) -> tuple[Frame | None, int]:
    """Find the first complete frame in a received byte stream.

    Returns ``(frame, n)``: the frame and the number of bytes it used up to its end byte
    (drop them from the buffer). ``(None, n)``: no complete frame yet; the first ``n`` bytes
    (preamble, noise) can be dropped and more bytes are needed. Raises :class:`FrameError`
    (with ``skip``) when a frame's checksum or end byte is wrong.
    """
    pos = 0
    while True:
        start = buffer.find(START, pos)
        if start < 0:
            return None, len(buffer)
        if len(buffer) < start + HEADER:
            return None, start
        if buffer[start + 7] != START:
            pos = start + 1                        # a stray 68H, not a frame header
            continue
        length = buffer[start + 9]
        end = start + HEADER + length + 2
        if len(buffer) < end:
            return None, start
        cs = sum(buffer[start:end - 2]) & 0xFF
        if buffer[end - 2] != cs:
            raise FrameError(f"bad checksum {buffer[end - 2]:02X}H, expected {cs:02X}H",
                             skip=start + 1)
        if buffer[end - 1] != END:
            raise FrameError(f"bad end byte {buffer[end - 1]:02X}H", skip=start + 1)
        raw = buffer[start + HEADER:end - 2]
        frame = Frame(decode_address(bytes(buffer[start + 1:start + 7])), buffer[start + 8],
                      bytes((b - OFFSET) & 0xFF for b in raw))
        return frame, end


def decode_read_reply(frame: Frame, address: str, di: str) -> bytes:
    """The value bytes of a reply to reading ``di`` from ``address``.

    Raises ErrorReply for an abnormal reply, FrameError for a reply from another address,
    with another control code or for another identifier.
    """
    if frame.address != address.upper():
        raise FrameError(f"reply from address {frame.address}, expected {address}")
    if frame.control == C_READ_ERROR:
        if len(frame.data) != 1:
            raise FrameError(f"error reply with {len(frame.data)} data bytes")
        raise ErrorReply(frame.data[0])
    if frame.control != C_READ_REPLY:
        raise FrameError(f"control code {frame.control:02X}H, expected {C_READ_REPLY:02X}H")
    if frame.data[:4] != _di_bytes(di):
        raise FrameError(f"reply for DI {frame.data[:4][::-1].hex().upper()}, expected {di}")
    return frame.data[4:]


def decode_read_address_reply(frame: Frame) -> str:
    """The address a meter reports in its 93H reply."""
    if frame.control == C_READ_ADDRESS | REPLY_BIT | ERROR_BIT and len(frame.data) == 1:
        raise ErrorReply(frame.data[0])
    if frame.control != C_READ_ADDRESS_REPLY or len(frame.data) != 6:
        raise FrameError(f"not a read-address reply: C={frame.control:02X}H "
                         f"L={len(frame.data)}")
    return decode_address(frame.data)
