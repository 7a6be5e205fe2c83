"""CJ/T 188-2004 codec (water, gas and heat meters): frames and the 901F reading. Pure, no I/O.

Frame (CJ/T 188-2004 clause 6.2)::

    [FE FE …]  68  T  A0 … A6  C  L  DATA(L bytes)  CS  16

* T: meter type (clause 6.2.2 table): 10H cold water, 11H domestic hot water, 12H drinking
  water, 13H reclaimed water, 20H heat meter (heat), 21H heat meter (cooling), 30H gas,
  40H electricity; AAH matches any type.
* A0..A6: 7 bytes BCD, A0 (lowest two digits) first; written here as the 14-digit string of
  the nameplate. AAH is the wildcard byte.
* C: D7 direction (1 = from the meter), D6 = 1 abnormal reply, D5..D0 function;
  read data 01H -> 81H, abnormal C1H.
* DATA of a read: DI0 DI1 SER — data identifier then a sequence byte the meter echoes.
  The 2004 text writes the identifier ``901F`` and sends DI0 = 90H first; meters built to
  CJ/T 188-2018 send it low byte first (``1F 90``). We send ``90 1F`` and accept either
  order in replies (:func:`decode_read_reply`).
* CS: sum of the bytes from 68H to the end of DATA, modulo 256. No 33H offset (unlike DL/T 645).
* An abnormal reply carries a status byte; we take the last data byte as its code.

The 901F reply (clause 7, "计量数据") after DI0 DI1 SER:

water / gas (T 1xH, 3xH), L = 16H::

    current accumulated flow   4 BCD XXXXXX.XX + unit      field "current_flow"
    settlement-day flow        4 BCD XXXXXX.XX + unit      field "settlement_flow"
    real time                  7 BCD YYYYMMDDhhmmss        (``Reading901F.time``)
    status ST1 ST2             2                           field "status" (ST1 + 256·ST2)

heat (T 2xH), L = 2EH::

    settlement-day heat        4 BCD XXXXXX.XX + unit      field "settlement_heat"
    current heat               4 BCD XXXXXX.XX + unit      field "current_heat"
    heat power                 4 BCD XXXXXX.XX + unit      field "heat_power"
    flow rate                  4 BCD XXXX.XXXX + unit      field "flow_rate"
    accumulated flow           4 BCD XXXXXX.XX + unit      field "accumulated_flow"
    supply water temperature   3 BCD XXXX.XX °C            field "supply_temp"
    return water temperature   3 BCD XXXX.XX °C            field "return_temp"
    accumulated working time   3 BCD XXXXXX h              field "working_hours"
    real time                  7 BCD
    status ST1 ST2             2                           field "status"

ST1 bits: D0..D1 valve (00 open, 01 closed, 11 abnormal), D2 battery (1 = low).

Unit codes (CJ/T 188-2004, table "单位代号"): see :data:`UNITS`. A value can be converted to
the unit a point is configured in with :func:`convert`.

Exceptions: :class:`Cjt188Error` (ValueError) ├── :class:`FrameError` (``.skip``)
└── :class:`ErrorReply` (``.code``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ._dlt645 import bcd_to_int, int_to_bcd

__all__ = [
    "C_READ",
    "C_READ_ERROR",
    "C_READ_REPLY",
    "DI_READING",
    "HEAT_FIELDS",
    "REPLY_BIT",
    "T_COLD_WATER",
    "T_HEAT",
    "UNITS",
    "WATER_FIELDS",
    "WILDCARD_TYPE",
    "Cjt188Error",
    "ErrorReply",
    "Frame",
    "FrameError",
    "Quantity",
    "Reading901F",
    "convert",
    "decode_901f",
    "decode_read_reply",
    "encode_901f",
    "encode_error_reply",
    "encode_frame",
    "encode_read_reply",
    "encode_read_request",
    "fields_for",
    "is_heat",
    "split_frame",
    "unit_code",
]

logger = logging.getLogger(__name__)

START, END, PREAMBLE = 0x68, 0x16, 0xFE
HEADER = 11                     # 68 T A0..A6 C L
C_READ = 0x01                   # read data (CJ/T 188-2004 clause 6.2.4)
C_READ_REPLY = 0x81
C_READ_ERROR = 0xC1
REPLY_BIT, ERROR_BIT = 0x80, 0x40
DI_READING = "901F"             # metering data (计量数据)
T_COLD_WATER = 0x10             # clause 6.2.2 meter type table
T_HEAT = 0x20
WILDCARD_TYPE = 0xAA

# Unit code -> (symbol, factor to the dimension's base unit). Codes: CJ/T 188-2004 unit table.
# Bases: energy J, power W, volume m³, flow rate m³/h.
UNITS: dict[int, tuple[str, float]] = {
    0x01: ("J", 1.0),
    0x02: ("Wh", 3.6e3),
    0x03: ("Wh×10", 3.6e4),
    0x04: ("Wh×100", 3.6e5),
    0x05: ("kWh", 3.6e6),
    0x06: ("kWh×10", 3.6e7),
    0x07: ("kWh×100", 3.6e8),
    0x08: ("MWh", 3.6e9),
    0x09: ("MWh×10", 3.6e10),
    0x0A: ("MWh×100", 3.6e11),
    0x0B: ("kJ", 1e3),
    0x0C: ("kJ×10", 1e4),
    0x0D: ("kJ×100", 1e5),
    0x0E: ("MJ", 1e6),
    0x0F: ("MJ×10", 1e7),
    0x10: ("MJ×100", 1e8),
    0x11: ("GJ", 1e9),
    0x12: ("GJ×10", 1e10),
    0x13: ("GJ×100", 1e11),
    0x14: ("W", 1.0),
    0x15: ("W×10", 10.0),
    0x16: ("W×100", 100.0),
    0x17: ("kW", 1e3),
    0x18: ("kW×10", 1e4),
    0x19: ("kW×100", 1e5),
    0x1A: ("MW", 1e6),
    0x1B: ("MW×10", 1e7),
    0x1C: ("MW×100", 1e8),
    0x29: ("L", 1e-3),
    0x2A: ("L×10", 1e-2),
    0x2B: ("L×100", 1e-1),
    0x2C: ("m³", 1.0),
    0x2D: ("m³×10", 10.0),
    0x2E: ("m³×100", 100.0),
    0x32: ("L/h", 1e-3),
    0x33: ("L/h×10", 1e-2),
    0x34: ("L/h×100", 1e-1),
    0x35: ("m³/h", 1.0),
    0x36: ("m³/h×10", 10.0),
    0x37: ("m³/h×100", 100.0),
}
_DIMENSION = {**dict.fromkeys(range(0x01, 0x14), "energy"),
              **dict.fromkeys(range(0x14, 0x1D), "power"),
              **dict.fromkeys(range(0x29, 0x2F), "volume"),
              **dict.fromkeys(range(0x32, 0x38), "flow")}
_ALIASES = {"m3": "m³", "m3/h": "m³/h", "kw·h": "kWh", "kw.h": "kWh"}

WATER_FIELDS = ("current_flow", "settlement_flow", "status")
HEAT_FIELDS = ("settlement_heat", "current_heat", "heat_power", "flow_rate",
               "accumulated_flow", "supply_temp", "return_temp", "working_hours", "status")


class Cjt188Error(ValueError):
    """A CJ/T 188 frame or value could not be used."""


class FrameError(Cjt188Error):
    """Corrupt or unexpected frame; ``skip`` as in :func:`gateway._dlt645.split_frame`."""

    def __init__(self, message: str, skip: int = 0) -> None:
        super().__init__(message)
        self.skip = skip


class ErrorReply(Cjt188Error):
    """The meter answered with an abnormal reply; ``code`` is its status byte."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error reply, status {code:02X}H")
        self.code = code


def unit_code(symbol: str) -> int:
    """The unit code for a symbol such as ``"m³"`` or ``"kWh"``. KeyError if none."""
    wanted = _ALIASES.get(symbol.lower(), symbol)
    for code, (name, _) in UNITS.items():
        if name == wanted:
            return code
    raise KeyError(f"no CJ/T 188 unit code for {symbol!r}")


def convert(value: float, code: int, target: str) -> float:
    """``value`` in unit ``code`` expressed in ``target`` (a symbol of the same dimension).
    An empty target leaves the value in the meter's unit. Raises Cjt188Error if impossible."""
    if not target:
        return value
    if code not in UNITS:
        raise Cjt188Error(f"unknown unit code {code:02X}H")
    try:
        target_code = unit_code(target)
    except KeyError:
        raise Cjt188Error(f"cannot convert to unit {target!r}") from None
    if _DIMENSION[code] != _DIMENSION[target_code]:
        raise Cjt188Error(f"meter reports {UNITS[code][0]}, point wants {target}")
    return value * UNITS[code][1] / UNITS[target_code][1]


def is_heat(device_type: int) -> bool:
    """Heat meters (T 20H..2FH) have the long 901F layout."""
    return device_type >> 4 == 0x2


def fields_for(device_type: int) -> tuple[str, ...]:
    return HEAT_FIELDS if is_heat(device_type) else WATER_FIELDS


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Frame:
    device_type: int
    address: str
    control: int
    data: bytes


def _address_bytes(address: str) -> bytes:
    if len(address) != 14 or any(ch not in "0123456789Aa" for ch in address):
        raise ValueError(f"CJ/T 188 address {address!r}: need 14 digits")
    return bytes.fromhex(address)[::-1]


def encode_frame(device_type: int, address: str, control: int, data: bytes,
                 *, preamble: bool = True) -> bytes:
    if len(data) > 255:
        raise ValueError("CJ/T 188 data field longer than 255 bytes")
    body = bytearray([START, device_type, *_address_bytes(address), control, len(data)])
    body += data
    body += bytes([sum(body) & 0xFF, END])
    return (bytes([PREAMBLE] * 2) if preamble else b"") + bytes(body)


def _di(di: str) -> bytes:
    if len(di) != 4:
        raise ValueError(f"CJ/T 188 data identifier {di!r}: need 4 hex digits")
    return bytes.fromhex(di)


def encode_read_request(device_type: int, address: str, di: str = DI_READING, ser: int = 0,
                        *, preamble: bool = True) -> bytes:
    """Read data (01H): DI0 DI1 SER, DI in the order written (``901F`` -> ``90 1F``)."""
    return encode_frame(device_type, address, C_READ, _di(di) + bytes([ser & 0xFF]),
                        preamble=preamble)


def encode_read_reply(device_type: int, address: str, di: bytes, ser: int, payload: bytes,
                      *, preamble: bool = True) -> bytes:
    """The meter's reply (81H); ``di`` is echoed as the request sent it."""
    return encode_frame(device_type, address, C_READ_REPLY, di + bytes([ser]) + payload,
                        preamble=preamble)


def encode_error_reply(device_type: int, address: str, code: int,
                       *, preamble: bool = True) -> bytes:
    return encode_frame(device_type, address, C_READ_ERROR, bytes([code]), preamble=preamble)


def split_frame(buffer: bytes | bytearray) -> tuple[Frame | None, int]:
    """Like :func:`gateway._dlt645.split_frame`: ``(frame, bytes used)``,
    ``(None, droppable bytes)`` while incomplete, FrameError on bad checksum / end byte."""
    pos = 0
    while True:
        start = buffer.find(START, pos)
        if start < 0:
            return None, len(buffer)
        if len(buffer) < start + HEADER:
            return None, start
        length = buffer[start + 10]
        end = start + HEADER + length + 2
        if len(buffer) < end:
            return None, start
        cs = sum(buffer[start:end - 2]) & 0xFF
        if buffer[end - 2] != cs or buffer[end - 1] != END:
            # A 68H inside noise or inside another frame looks like a start; only a frame
            # whose checksum and end byte fit is one. Report the first bad candidate.
            raise FrameError(
                f"bad checksum/end byte {buffer[end - 2]:02X}H {buffer[end - 1]:02X}H "
                f"(checksum should be {cs:02X}H)", skip=start + 1)
        frame = Frame(buffer[start + 1], bytes(buffer[start + 2:start + 9])[::-1].hex().upper(),
                      buffer[start + 9], bytes(buffer[start + HEADER:end - 2]))
        return frame, end


def decode_read_reply(frame: Frame, device_type: int, address: str, di: str = DI_READING
                      ) -> tuple[int, bytes]:
    """``(SER, payload after DI0 DI1 SER)`` of a reply to reading ``di``.

    Raises ErrorReply (C1H), FrameError for another address, type, control code or DI.
    """
    if frame.address != address.upper():
        raise FrameError(f"reply from address {frame.address}, expected {address}")
    if device_type not in (WILDCARD_TYPE, frame.device_type):
        raise FrameError(f"reply from meter type {frame.device_type:02X}H, "
                         f"expected {device_type:02X}H")
    if frame.control & (REPLY_BIT | ERROR_BIT) == REPLY_BIT | ERROR_BIT:
        raise ErrorReply(frame.data[-1] if frame.data else 0)
    if frame.control != C_READ_REPLY:
        raise FrameError(f"control code {frame.control:02X}H, expected {C_READ_REPLY:02X}H")
    wanted = _di(di)
    if len(frame.data) < 3 or frame.data[:2] not in (wanted, wanted[::-1]):
        raise FrameError(f"reply for DI {frame.data[:2].hex().upper()}, expected {di}")
    return frame.data[2], frame.data[3:]


# --------------------------------------------------------------------------- 901F values


@dataclass(frozen=True, slots=True)
class Quantity:
    value: float
    unit: int                        # unit code; 0 for quantities without one (°C, h, status)

    def to(self, target: str) -> float:
        return self.value if not self.unit else convert(self.value, self.unit, target)


@dataclass(frozen=True, slots=True)
class Reading901F:
    """A decoded 901F reply: values by field name, and the meter's clock as 14 digits."""

    values: dict[str, Quantity]
    time: str


def _bcd(data: bytes, decimals: int) -> float:
    try:
        number = bcd_to_int(data)
    except ValueError as exc:
        raise Cjt188Error(str(exc)) from None
    return number / float(10**decimals)


# (field, BCD bytes, decimals, followed by a unit byte) in reply order.
_WATER_LAYOUT = (("current_flow", 4, 2, True), ("settlement_flow", 4, 2, True))
_HEAT_LAYOUT = (
    ("settlement_heat", 4, 2, True), ("current_heat", 4, 2, True), ("heat_power", 4, 2, True),
    ("flow_rate", 4, 4, True), ("accumulated_flow", 4, 2, True),
    ("supply_temp", 3, 2, False), ("return_temp", 3, 2, False), ("working_hours", 3, 0, False),
)


def _layout(device_type: int) -> tuple[tuple[str, int, int, bool], ...]:
    return _HEAT_LAYOUT if is_heat(device_type) else _WATER_LAYOUT


def _payload_size(device_type: int) -> int:
    return sum(n + int(u) for _, n, _, u in _layout(device_type)) + 7 + 2


def decode_901f(device_type: int, payload: bytes) -> Reading901F:
    """Decode the 901F data after DI0 DI1 SER (19 bytes water/gas, 43 bytes heat)."""
    size = _payload_size(device_type)
    if len(payload) != size:
        raise Cjt188Error(f"901F reply for type {device_type:02X}H: expected {size} bytes "
                          f"after DI and SER, got {len(payload)}")
    values: dict[str, Quantity] = {}
    pos = 0
    for name, n, decimals, has_unit in _layout(device_type):
        number = _bcd(payload[pos:pos + n], decimals)
        pos += n
        unit = 0
        if has_unit:
            unit = payload[pos]
            pos += 1
            if unit not in UNITS:
                raise Cjt188Error(f"{name}: unknown unit code {unit:02X}H")
        values[name] = Quantity(number, unit)
    time = payload[pos:pos + 7][::-1].hex()
    pos += 7
    values["status"] = Quantity(float(payload[pos] | payload[pos + 1] << 8), 0)
    return Reading901F(values, time)


def encode_901f(device_type: int, values: dict[str, Quantity], time: str,
                status: int = 0) -> bytes:
    """The 901F payload (inverse of :func:`decode_901f`); missing fields are 0 in m³/kWh/kW
    /m³/h as fits. ``time`` is 14 digits YYYYMMDDhhmmss. OverflowError if a value is too big."""
    defaults = {"energy": 0x05, "power": 0x17, "volume": 0x2C, "flow": 0x35}
    out = bytearray()
    for name, n, decimals, has_unit in _layout(device_type):
        quantity = values.get(name)
        value = quantity.value if quantity else 0.0
        out += int_to_bcd(round(value * 10**decimals), n)
        if has_unit:
            dimension = ("energy" if name.endswith("heat") else "power" if name == "heat_power"
                         else "flow" if name == "flow_rate" else "volume")
            out.append(quantity.unit if quantity and quantity.unit else defaults[dimension])
    out += bytes.fromhex(time)[::-1]
    out += bytes([status & 0xFF, status >> 8 & 0xFF])
    return bytes(out)
