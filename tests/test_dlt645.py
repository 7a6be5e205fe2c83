"""DL/T 645-2007 codec: byte vectors checked by hand (sums worked out on paper), values per
the appendix A formats, stream extraction, and the simulator's pure responder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import _dlt645 as d
from gateway._model import PointConfig
from gateway.sim._dlt645_sim import Dlt645Responder
from gateway.sim._values import SimMeter, point_value

H = bytes.fromhex

# Meter 112233445566: on the wire A0 first -> 66 55 44 33 22 11.
# Sum of 68 66 55 44 33 22 11 68 = 0x235 (used in the checksums below).
READ_ENERGY = H("fefefefe 68 665544332211 68 11 04 33333433 17 16")
REPLY_ENERGY = H("68 665544332211 68 91 08 33333433 ab896745 7b 16")        # 123456.78 kWh
REPLY_ERROR = H("68 665544332211 68 d1 01 35 3c 16")                        # ERR 02H
READ_ADDRESS = H("68 aaaaaaaaaaaa 68 13 00 df 16")
REPLY_ADDRESS = H("68 665544332211 68 93 06 998877665544 65 16")


@pytest.mark.parametrize(("frame", "expected"), [
    (d.encode_read_request("112233445566", "00010000"), READ_ENERGY),
    # 68+01+68+11+04+33+34+34+35 = 0x1B6
    (d.encode_read_request("000000000001", "02010100", preamble=False),
     H("68 010000000000 68 11 04 33343435 b6 16")),
    (d.encode_read_address_request(preamble=False), READ_ADDRESS),
    (d.encode_read_reply("112233445566", "00010000", H("78563412"), preamble=False),
     REPLY_ENERGY),
    (d.encode_error_reply("112233445566", d.ERR_NO_DATA, preamble=False), REPLY_ERROR),
    (d.encode_read_address_reply("112233445566", preamble=False), REPLY_ADDRESS),
])
def test_encode_vectors(frame: bytes, expected: bytes) -> None:
    assert frame == expected


def test_address_is_sent_low_byte_first_and_read_back_as_printed() -> None:
    assert d.encode_address("112233445566") == H("665544332211")
    assert d.decode_address(H("665544332211")) == "112233445566"
    frame, _ = d.split_frame(REPLY_ADDRESS)
    assert frame is not None
    assert d.decode_read_address_reply(frame) == "112233445566"


@pytest.mark.parametrize("address", ["11223344556", "1122334455667", "11223344556X", ""])
def test_bad_address(address: str) -> None:
    with pytest.raises(ValueError, match="address"):
        d.encode_address(address)


def test_decode_normal_reply() -> None:
    frame, used = d.split_frame(REPLY_ENERGY)
    assert frame is not None and used == len(REPLY_ENERGY)
    assert frame == d.Frame("112233445566", 0x91, H("00000100 78563412"))
    assert frame.from_meter
    payload = d.decode_read_reply(frame, "112233445566", "00010000")
    assert d.decode_values("00010000", payload) == (123456.78,)


def test_error_reply_carries_err_byte() -> None:
    frame, _ = d.split_frame(REPLY_ERROR)
    assert frame is not None
    with pytest.raises(d.ErrorReply, match="no requested data") as info:
        d.decode_read_reply(frame, "112233445566", "00010000")
    assert info.value.code == 0x02


@pytest.mark.parametrize(("address", "di", "message"), [
    ("112233445567", "00010000", "address 112233445566"),
    ("112233445566", "00020000", "DI 00010000"),
])
def test_reply_for_someone_else_is_a_frame_error(address: str, di: str, message: str) -> None:
    frame, _ = d.split_frame(REPLY_ENERGY)
    assert frame is not None
    with pytest.raises(d.FrameError, match=message):
        d.decode_read_reply(frame, address, di)


def test_request_frame_is_not_a_reply() -> None:
    frame, _ = d.split_frame(READ_ENERGY)
    assert frame is not None and not frame.from_meter
    with pytest.raises(d.FrameError, match="control code 11H"):
        d.decode_read_reply(frame, "112233445566", "00010000")


# --------------------------------------------------------------------------- stream


@pytest.mark.parametrize("prefix", [b"", H("fe"), H("fefefefe"), H("00ff13fefe"),
                                    H("680102")])  # a stray 68H whose byte 7 is not 68H
def test_split_skips_preamble_and_noise(prefix: bytes) -> None:
    frame, used = d.split_frame(prefix + REPLY_ENERGY)
    assert frame is not None and frame.control == 0x91
    assert used == len(prefix) + len(REPLY_ENERGY)


@pytest.mark.parametrize("cut", range(len(REPLY_ENERGY)))
def test_truncated_frame_waits_for_more(cut: int) -> None:
    data = H("fefe") + REPLY_ENERGY[:cut]
    frame, droppable = d.split_frame(data)
    assert frame is None
    # everything before the 68H may go, the 68H and what follows must stay
    assert droppable == (2 if cut else len(data))


def test_two_frames_back_to_back() -> None:
    data = REPLY_ENERGY + REPLY_ERROR
    first, used = d.split_frame(data)
    second, used2 = d.split_frame(data[used:])
    assert first is not None and first.control == 0x91
    assert second is not None and second.control == 0xD1
    assert used + used2 == len(data)


@pytest.mark.parametrize(("index", "what"), [(-2, "checksum"), (-1, "end byte")])
def test_corrupt_frame_is_reported_with_skip(index: int, what: str) -> None:
    bad = bytearray(H("fefe") + REPLY_ENERGY)
    bad[index] ^= 0x01
    with pytest.raises(d.FrameError, match=what) as info:
        d.split_frame(bad)
    assert info.value.skip == 3          # just past the 68H at index 2


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize(("di", "payload", "values"), [
    ("00010000", "78563412", (123456.78,)),                      # XXXXXX.XX kWh
    ("00000000", "01000080", (-0.01,)),                          # combined: signed
    ("02010100", "3412", (123.4,)),                              # XXX.X V
    ("02020100", "563412", (123.456,)),                          # XXX.XXX A
    ("02020100", "563492", (-123.456,)),                         # sign bit set
    ("02030000", "563412", (12.3456,)),                          # XX.XXXX kW
    ("02030000", "563482", (-2.3456,)),
    ("02060000", "0010", (1.0,)),                                # X.XXX
    ("02060000", "0090", (-1.0,)),
    ("02800002", "0050", (50.0,)),                               # XX.XX Hz
    ("0201FF00", "002210222022", (220.0, 221.0, 222.0)),        # block A, B, C
    ("0001FF00", "0000010000005000", (100.0, 5000.0)),          # total + tariff 1
])
def test_decode_values(di: str, payload: str, values: tuple[float, ...]) -> None:
    assert d.decode_values(di, H(payload)) == pytest.approx(values)
    assert d.encode_values(di, values) == H(payload)


@pytest.mark.parametrize(("di", "payload", "message"), [
    ("00010000", "7a563412", "not BCD"),
    ("00010000", "785634", "expected 4"),
    ("0201FF00", "0022", "expected 6"),
    ("0001FF00", "000001", "whole number"),
])
def test_bad_values(di: str, payload: str, message: str) -> None:
    with pytest.raises(d.Dlt645Error, match=message):
        d.decode_values(di, H(payload))


@pytest.mark.parametrize(("di", "value"), [("02010100", 1000.0), ("02030000", 80.0),
                                           ("02010100", -1.0)])
def test_encode_overflow(di: str, value: float) -> None:
    with pytest.raises(OverflowError):
        d.encode_values(di, [value])


@given(st.sampled_from(sorted(d.DATA_ITEMS)), st.integers(min_value=0, max_value=10**8))
def test_encode_decode_round_trip(di: str, raw: int) -> None:
    item = d.DATA_ITEMS[di]
    digits = len(item.fmt.replace(".", ""))
    limit = 8 * 10 ** (digits - 1) if item.signed else 10**digits
    count = max(1, item.count)
    values = [(raw % limit) / 10**item.decimals * (-1 if item.signed and raw % 2 else 1)] * count
    assert d.decode_values(di, d.encode_values(di, values)) == pytest.approx(values)


def test_data_table_and_fields() -> None:
    item = d.data_item("0201ff00")
    assert (item.fmt, item.unit, item.fields) == ("XXX.X", "V", ("a", "b", "c"))
    assert d.data_item("00010000").name == "forward active energy, total"
    assert d.field_index("0203FF00", "b") == 2
    assert d.field_index("00010000", None) == 0
    with pytest.raises(ValueError, match="block"):
        d.field_index("0201FF00", None)
    with pytest.raises(ValueError, match="one value"):
        d.field_index("00010000", "a")
    with pytest.raises(KeyError, match="not in the data table"):
        d.data_item("DEADBEEF")


# --------------------------------------------------------------------------- responder

T = 1_780_000_000.0
POINTS = (
    PointConfig(code="e", di="00010000", counter=True, unit="kWh"),
    PointConfig(code="vb", di="0201FF00", field="b", unit="V"),
)


def _answer(meters: list[SimMeter], request: bytes) -> d.Frame | None:
    frame, _ = d.split_frame(request)
    assert frame is not None
    reply = Dlt645Responder(meters, clock=lambda: T).answer(frame)
    if reply is None:
        return None
    out, _ = d.split_frame(reply)
    return out


def test_responder_answers_values_in_format() -> None:
    meters = [SimMeter("000000000001", POINTS)]
    reply = _answer(meters, d.encode_read_request("000000000001", "00010000"))
    assert reply is not None
    (value,) = d.decode_values("00010000", d.decode_read_reply(reply, "000000000001", "00010000"))
    assert value == pytest.approx(point_value(POINTS[0], T), abs=0.005)
    block = _answer(meters, d.encode_read_request("000000000001", "0201FF00"))
    assert block is not None
    a, b, c = d.decode_values("0201FF00", d.decode_read_reply(block, "000000000001", "0201FF00"))
    assert (a, c) == (0.0, 0.0)
    assert b == pytest.approx(point_value(POINTS[1], T), abs=0.05)


def test_responder_unknown_di_other_address_and_faults() -> None:
    meters = [SimMeter("000000000001", POINTS), SimMeter("000000000002", POINTS, "silent"),
              SimMeter("000000000003", POINTS, "exception")]
    reply = _answer(meters, d.encode_read_request("000000000001", "02800002"))
    assert reply is not None
    with pytest.raises(d.ErrorReply) as info:
        d.decode_read_reply(reply, "000000000001", "02800002")
    assert info.value.code == d.ERR_NO_DATA
    assert _answer(meters, d.encode_read_request("000000000009", "00010000")) is None
    assert _answer(meters, d.encode_read_request("000000000002", "00010000")) is None
    reply = _answer(meters, d.encode_read_request("000000000003", "00010000"))
    assert reply is not None and reply.control == d.C_READ_ERROR


def test_responder_garbles_checksum_and_answers_read_address() -> None:
    meters = [SimMeter("000000000002", POINTS, "silent"), SimMeter("000000000005", POINTS)]
    assert _answer(meters, d.encode_read_address_request()) == d.Frame(
        "000000000005", d.C_READ_ADDRESS_REPLY, H("050000000000"))
    garbler = [SimMeter("000000000001", POINTS, "garble")]
    frame, _ = d.split_frame(d.encode_read_request("000000000001", "00010000"))
    assert frame is not None
    reply = Dlt645Responder(garbler, clock=lambda: T).answer(frame)
    assert reply is not None
    with pytest.raises(d.FrameError, match="checksum"):
        d.split_frame(reply)
