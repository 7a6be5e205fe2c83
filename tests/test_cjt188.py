"""CJ/T 188-2004 codec: hand-checked byte vectors, the 901F layouts of water and heat meters,
unit codes, stream extraction, and the simulator's pure responder."""

from __future__ import annotations

import pytest

from gateway import _cjt188 as c
from gateway._model import PointConfig
from gateway.sim._cjt188_sim import Cjt188Responder
from gateway.sim._values import SimMeter, point_value

H = bytes.fromhex

# 68+10+34+12+90+78+56+34+12+01+03+90+1F+00 = 0x315
READ_WATER = H("fefe 68 10 34129078563412 01 03 901f00 15 16")
# Water meter 00000000000001: current 1234.56 m³, settlement 1200.00 m³,
# time 2026-03-15 10:20:30, ST1 = 04H (battery low). Sum of bytes before CS = 0x387.
WATER_PAYLOAD = H("56341200 2c 00001200 2c 30201015032620 0400")
REPLY_WATER = H("68 10 01000000000000 81 16 901f00") + WATER_PAYLOAD + H("87 16")
REPLY_ERROR = H("68 10 01000000000000 c1 01 01 3c 16")          # 68+10+01+C1+01+01 = 0x13C
# Heat meter: settlement heat 100.00 kWh, current heat 1234.50 kWh, power 25.00 kW,
# flow rate 12.5000 m³/h, accumulated flow 1000.00 m³, supply 75.50 °C, return 45.25 °C,
# 1234 h, time, status 0.
HEAT_PAYLOAD = H("00000100 05 50341200 05 00250000 17 00501200 35 00001000 2c"
                 "507500 254500 341200 30201015032620 0000")


def test_encode_read_request() -> None:
    assert c.encode_read_request(0x10, "12345678901234") == READ_WATER


def test_decode_water_reply() -> None:
    frame, used = c.split_frame(H("fefefe") + REPLY_WATER)
    assert frame is not None and used == 3 + len(REPLY_WATER)
    assert (frame.device_type, frame.address, frame.control) == (0x10, "00000000000001", 0x81)
    ser, payload = c.decode_read_reply(frame, 0x10, "00000000000001")
    assert (ser, payload) == (0, WATER_PAYLOAD)
    reading = c.decode_901f(0x10, payload)
    assert reading.values == {
        "current_flow": c.Quantity(1234.56, 0x2C),
        "settlement_flow": c.Quantity(1200.0, 0x2C),
        "status": c.Quantity(4.0, 0),
    }
    assert reading.time == "20260315102030"
    assert c.encode_901f(0x10, reading.values, reading.time, 4) == WATER_PAYLOAD


def test_reply_with_identifier_low_byte_first_is_accepted() -> None:
    frame = c.Frame(0x10, "00000000000001", 0x81, H("1f9000") + WATER_PAYLOAD)
    assert c.decode_read_reply(frame, 0x10, "00000000000001")[1] == WATER_PAYLOAD


def test_decode_heat_reply() -> None:
    reading = c.decode_901f(0x20, HEAT_PAYLOAD)
    values = {k: (q.value, q.unit) for k, q in reading.values.items()}
    assert values == {
        "settlement_heat": (100.0, 0x05), "current_heat": (1234.5, 0x05),
        "heat_power": (25.0, 0x17), "flow_rate": (12.5, 0x35),
        "accumulated_flow": (1000.0, 0x2C), "supply_temp": (75.5, 0),
        "return_temp": (45.25, 0), "working_hours": (1234.0, 0), "status": (0.0, 0),
    }
    assert c.encode_901f(0x20, reading.values, reading.time) == HEAT_PAYLOAD


def test_error_reply() -> None:
    frame, _ = c.split_frame(REPLY_ERROR)
    assert frame is not None
    with pytest.raises(c.ErrorReply) as info:
        c.decode_read_reply(frame, 0x10, "00000000000001")
    assert info.value.code == 0x01
    assert c.encode_error_reply(0x10, "00000000000001", 1, preamble=False) == REPLY_ERROR


@pytest.mark.parametrize(("device_type", "address", "message"), [
    (0x10, "00000000000002", "address"),
    (0x20, "00000000000001", "meter type 10H"),
])
def test_reply_from_someone_else(device_type: int, address: str, message: str) -> None:
    frame, _ = c.split_frame(REPLY_WATER)
    assert frame is not None
    with pytest.raises(c.FrameError, match=message):
        c.decode_read_reply(frame, device_type, address)


def test_wrong_identifier_and_wrong_length() -> None:
    frame = c.Frame(0x10, "00000000000001", 0x81, H("902f00") + WATER_PAYLOAD)
    with pytest.raises(c.FrameError, match="DI 902F"):
        c.decode_read_reply(frame, 0x10, "00000000000001")
    with pytest.raises(c.Cjt188Error, match="expected 19 bytes"):
        c.decode_901f(0x10, WATER_PAYLOAD[:-1])
    with pytest.raises(c.Cjt188Error, match="unit code 99H"):
        c.decode_901f(0x10, WATER_PAYLOAD[:4] + b"\x99" + WATER_PAYLOAD[5:])
    with pytest.raises(c.Cjt188Error, match="not BCD"):
        c.decode_901f(0x10, b"\xaa" + WATER_PAYLOAD[1:])


@pytest.mark.parametrize("cut", range(len(REPLY_WATER)))
def test_truncated_frame_waits(cut: int) -> None:
    frame, droppable = c.split_frame(H("fefe") + REPLY_WATER[:cut])
    assert frame is None
    assert droppable == 2


@pytest.mark.parametrize("index", [-2, -1])
def test_corrupt_frame(index: int) -> None:
    bad = bytearray(REPLY_WATER)
    bad[index] ^= 0x10
    with pytest.raises(c.FrameError, match="checksum") as info:
        c.split_frame(bad)
    assert info.value.skip == 1


@pytest.mark.parametrize(("value", "code", "target", "expected"), [
    (1500.0, 0x29, "m³", 1.5),
    (1.5, 0x2C, "L", 1500.0),
    (2.0, 0x2C, "m3", 2.0),
    (1000.0, 0x05, "GJ", 3.6),
    (3.6, 0x11, "kWh", 1000.0),
    (250.0, 0x17, "MW", 0.25),
    (7.0, 0x2C, "", 7.0),            # no unit on the point: the meter's unit
])
def test_convert(value: float, code: int, target: str, expected: float) -> None:
    assert c.convert(value, code, target) == pytest.approx(expected)


@pytest.mark.parametrize(("code", "target", "message"), [
    (0x2C, "kWh", "point wants kWh"),
    (0x2C, "furlong", "cannot convert"),
    (0x99, "m³", "unknown unit"),
])
def test_convert_refuses(code: int, target: str, message: str) -> None:
    with pytest.raises(c.Cjt188Error, match=message):
        c.convert(1.0, code, target)


def test_fields() -> None:
    assert c.fields_for(0x10) == ("current_flow", "settlement_flow", "status")
    assert "supply_temp" in c.fields_for(0x21)
    assert c.unit_code("m³") == 0x2C and c.unit_code("kWh") == 0x05


# --------------------------------------------------------------------------- responder

T = 1_780_000_000.0      # 2026-05-29T04:26:40+08:00
POINTS = (PointConfig(code="w", di="901F", field="current_flow", counter=True, unit="m³"),
          PointConfig(code="s", di="901F", field="settlement_flow", unit="L"))


def _answer(meters: list[SimMeter], request: bytes) -> c.Frame | None:
    frame, _ = c.split_frame(request)
    assert frame is not None
    reply = Cjt188Responder(meters, clock=lambda: T).answer(frame)
    if reply is None:
        return None
    out, _ = c.split_frame(reply)
    return out


def test_responder_values_units_and_time() -> None:
    meters = [SimMeter("00000000000001", POINTS)]
    reply = _answer(meters, c.encode_read_request(0x10, "00000000000001", ser=7))
    assert reply is not None
    ser, payload = c.decode_read_reply(reply, 0x10, "00000000000001")
    reading = c.decode_901f(0x10, payload)
    assert ser == 7
    assert reading.values["current_flow"].unit == 0x2C
    assert reading.values["current_flow"].value == pytest.approx(point_value(POINTS[0], T),
                                                                 abs=0.005)
    assert reading.values["settlement_flow"].unit == 0x29
    assert reading.time == "20260529042640"


def test_responder_type_address_and_faults() -> None:
    meters = [SimMeter("00000000000001", POINTS),
              SimMeter("00000000000002", POINTS, "silent"),
              SimMeter("00000000000003", POINTS, "exception"),
              SimMeter("00000000000004", POINTS, "garble")]
    assert _answer(meters, c.encode_read_request(0x20, "00000000000001")) is None
    assert _answer(meters, c.encode_read_request(0xAA, "00000000000001")) is not None
    assert _answer(meters, c.encode_read_request(0x10, "00000000000009")) is None
    assert _answer(meters, c.encode_read_request(0x10, "00000000000002")) is None
    reply = _answer(meters, c.encode_read_request(0x10, "00000000000003"))
    assert reply is not None and reply.control == c.C_READ_ERROR
    reply = _answer(meters, c.encode_read_request(0x10, "00000000000001", di="907F"))
    assert reply is not None and reply.control == c.C_READ_ERROR
    frame, _ = c.split_frame(c.encode_read_request(0x10, "00000000000004"))
    assert frame is not None
    garbled = Cjt188Responder(meters, clock=lambda: T).answer(frame)
    assert garbled is not None
    with pytest.raises(c.FrameError):
        c.split_frame(garbled)
