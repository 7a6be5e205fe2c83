"""Register decoding/encoding vectors and request planning (gateway._registers)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway._model import PointConfig
from gateway._registers import (
    MAX_READ_REGISTERS,
    ReadBlock,
    block_registers,
    decode,
    encode,
    plan_reads,
)


def pt(
    type_: str = "uint16",
    word: str = "big",
    byte: str = "big",
    scale: float = 1.0,
    register: int = 0,
    function: str = "holding",
    code: str = "p",
) -> PointConfig:
    return PointConfig(
        code=code, register=register, function=function, type=type_,
        word_order=word, byte_order=byte, scale=scale,
    )


# (type, word_order, byte_order, registers on the wire, value)
VECTORS = [
    ("float32", "big", "big", [0x4366, 0x0000], 230.0),
    ("float32", "little", "big", [0x0000, 0x4366], 230.0),
    ("float32", "big", "little", [0x6643, 0x0000], 230.0),
    ("float32", "little", "little", [0x0000, 0x6643], 230.0),
    ("float32", "big", "big", [0x3F80, 0x0000], 1.0),
    ("float32", "big", "big", [0xC2C8, 0x0000], -100.0),
    ("float64", "big", "big", [0x406C, 0xC000, 0x0000, 0x0000], 230.0),
    ("float64", "little", "big", [0x0000, 0x0000, 0xC000, 0x406C], 230.0),
    ("int16", "big", "big", [0xFFFF], -1.0),
    ("int16", "big", "big", [0x8000], -32768.0),
    ("int16", "big", "little", [0x0180], -32767.0),
    ("uint16", "big", "big", [0xFFFF], 65535.0),
    ("uint16", "big", "little", [0x3412], 0x1234),
    ("int32", "big", "big", [0xFFFF, 0xFFFE], -2.0),
    ("int32", "little", "big", [0xFFFE, 0xFFFF], -2.0),
    ("uint32", "big", "big", [0x0001, 0x0000], 65536.0),
    ("uint32", "little", "big", [0x0000, 0x0001], 65536.0),
    ("uint32", "little", "little", [0x0000, 0x0100], 65536.0),
    ("uint32", "big", "big", [0x1234, 0x5678], 0x12345678),
    ("int64", "big", "big", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], -1.0),
    ("int64", "big", "big", [0x0000, 0x0000, 0x0001, 0x86A0], 100000.0),
    ("int64", "little", "big", [0x86A0, 0x0001, 0x0000, 0x0000], 100000.0),
    ("uint64", "big", "big", [0x0001, 0x0000, 0x0000, 0x0000], float(1 << 48)),
    ("uint64", "big", "little", [0x0000, 0x0000, 0x0000, 0x0100], 1.0),
]


@pytest.mark.parametrize(("type_", "word", "byte", "regs", "value"), VECTORS)
def test_decode_vectors(type_: str, word: str, byte: str, regs: list[int], value: float) -> None:
    assert decode(pt(type_, word, byte), regs) == value


@pytest.mark.parametrize(("type_", "word", "byte", "regs", "value"), VECTORS)
def test_encode_vectors(type_: str, word: str, byte: str, regs: list[int], value: float) -> None:
    assert encode(pt(type_, word, byte), value) == regs


def test_scale_applies_both_ways() -> None:
    p = pt("int16", scale=0.1)
    assert decode(p, [2305]) == pytest.approx(230.5)
    assert encode(p, 230.5) == [2305]
    assert decode(pt("uint32", scale=0.01), [0x0001, 0x0000]) == pytest.approx(655.36)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("type_", ["float32", "float64"])
def test_nan_and_inf_are_errors(type_: str, bad: float) -> None:
    p = pt(type_)
    regs = encode(p, bad)
    with pytest.raises(ValueError, match="register holds"):
        decode(p, regs)


def test_nan_vector() -> None:
    with pytest.raises(ValueError, match="nan"):
        decode(pt("float32"), [0x7FC0, 0x0000])
    with pytest.raises(ValueError, match="-inf"):
        decode(pt("float32"), [0xFF80, 0x0000])


@pytest.mark.parametrize(
    ("point", "regs", "match"),
    [
        (pt("float32"), [1], "needs 2 registers"),
        (pt("uint16"), [1, 2], "needs 1 registers"),
        (pt("int64"), [1, 2, 3], "needs 4 registers"),
        (pt("uint16"), [0x10000], "not 16-bit"),
        (pt("uint16"), [-1], "not 16-bit"),
        (pt("bcd"), [1], "unknown register type"),
        (pt("uint16", word="middle"), [1], "word_order"),
    ],
)
def test_decode_rejects(point: PointConfig, regs: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode(point, regs)


@pytest.mark.parametrize(
    ("point", "value", "match"),
    [
        (pt("uint16"), -1.0, "out of range"),
        (pt("uint16"), 65536.0, "out of range"),
        (pt("int16"), 32768.0, "out of range"),
        (pt("int16", scale=0.1), 3276.8, "out of range"),
        (pt("uint32"), math.nan, "cannot be an integer"),
        (pt("float32"), 1e39, "out of range"),
        (pt("uint16", scale=0.0), 1.0, "scale 0"),
    ],
)
def test_encode_rejects(point: PointConfig, value: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode(point, value)


ORDERS = st.sampled_from(["big", "little"])
INT_RANGES = {
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}


@given(st.sampled_from(sorted(INT_RANGES)), ORDERS, ORDERS, st.data())
def test_integer_round_trip(type_: str, word: str, byte: str, data: st.DataObject) -> None:
    lo, hi = INT_RANGES[type_]
    n = data.draw(st.integers(lo, hi))
    p = pt(type_, word, byte)
    regs = encode(p, n)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert len(regs) == p.register_count
    # float(n) may round for 64-bit values; compare through the same float
    assert decode(p, regs) == float(n)


@given(st.floats(allow_nan=False, allow_infinity=False, width=32), ORDERS, ORDERS)
def test_float32_round_trip(x: float, word: str, byte: str) -> None:
    p = pt("float32", word, byte)
    assert decode(p, encode(p, x)) == x


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_round_trip(x: float, word: str, byte: str) -> None:
    p = pt("float64", word, byte)
    assert decode(p, encode(p, x)) == x


@given(st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2), ORDERS, ORDERS)
def test_any_float32_registers_decode_or_are_nan_inf(regs: list[int], word: str, byte: str) -> None:
    p = pt("float32", word, byte)
    words = regs if word == "big" else regs[::-1]
    if byte == "little":
        words = [(w & 0xFF) << 8 | w >> 8 for w in words]
    bits = words[0] << 16 | words[1]
    exponent_all_ones = (bits >> 23) & 0xFF == 0xFF  # IEEE 754 binary32: NaN or infinity
    if exponent_all_ones:
        with pytest.raises(ValueError, match="register holds"):
            decode(p, regs)
    else:
        assert encode(p, decode(p, regs)) == regs


# ---- planning -------------------------------------------------------------------------------


def at(
    register: int, type_: str = "float32", function: str = "holding", code: str = ""
) -> PointConfig:
    return pt(type_, register=register, function=function, code=code or f"{function}{register}")


def spans(blocks: list[ReadBlock]) -> list[tuple[int, int, int]]:
    return [(b.function_code, b.start, b.count) for b in blocks]


def test_contiguous_points_merge_into_one_block() -> None:
    points = [at(4), at(0), at(2)]
    blocks = plan_reads(points)
    assert spans(blocks) == [(3, 0, 6)]
    assert [p.register for p in blocks[0].points] == [0, 2, 4]


def test_gap_bridged_up_to_max_gap() -> None:
    # float32 at 0 ends at 2; next at 2+8=10 leaves a gap of 8 registers: bridged
    assert spans(plan_reads([at(0), at(10)], max_gap=8)) == [(3, 0, 12)]
    # gap of 9: two requests
    assert spans(plan_reads([at(0), at(11)], max_gap=8)) == [(3, 0, 2), (3, 11, 2)]
    assert spans(plan_reads([at(0), at(3)], max_gap=0)) == [(3, 0, 2), (3, 3, 2)]
    assert spans(plan_reads([at(0), at(2)], max_gap=0)) == [(3, 0, 4)]


def test_split_at_125_registers() -> None:
    points = [at(r) for r in range(0, 300, 2)]  # 150 float32, 300 registers contiguous
    blocks = plan_reads(points)
    assert spans(blocks) == [(3, 0, 124), (3, 124, 124), (3, 248, 52)]
    assert all(b.count <= MAX_READ_REGISTERS for b in blocks)
    assert sum(len(b.points) for b in blocks) == 150
    # a point never straddles two blocks
    for b in blocks:
        for p in b.points:
            assert b.start <= p.register < p.register + 2 <= b.start + b.count  # type: ignore[operator]


def test_exactly_125_registers_is_one_block() -> None:
    points = [at(r, "uint16") for r in range(125)]
    assert spans(plan_reads(points)) == [(3, 0, 125)]
    assert spans(plan_reads([*points, at(125, "uint16")])) == [(3, 0, 125), (3, 125, 1)]


def test_smaller_max_registers() -> None:
    assert spans(plan_reads([at(0), at(2), at(4)], max_registers=4)) == [(3, 0, 4), (3, 4, 2)]
    with pytest.raises(ValueError, match="needs 4 registers > 3"):
        plan_reads([at(0, "float64")], max_registers=3)
    with pytest.raises(ValueError, match="max_registers must be"):
        plan_reads([at(0)], max_registers=126)


def test_overlapping_points_share_registers() -> None:
    whole = at(10, "uint32", code="whole")
    high = at(10, "uint16", code="high")
    low = at(11, "uint16", code="low")
    blocks = plan_reads([low, high, whole])
    assert spans(blocks) == [(3, 10, 2)]
    got = {p.code: list(r) for p, r in block_registers(blocks[0], [0x0001, 0x0002])}
    assert got == {"whole": [1, 2], "high": [1], "low": [2]}
    # a short point inside a long one does not shrink the block
    blocks = plan_reads([at(0, "float64", code="d"), at(1, "uint16", code="u"), at(4, code="f")])
    assert spans(blocks) == [(3, 0, 6)]


def test_mixed_functions_never_merge() -> None:
    points = [at(0, function="input"), at(2, function="holding"), at(2, function="input"), at(0)]
    blocks = plan_reads(points)
    assert spans(blocks) == [(3, 0, 4), (4, 0, 4)]
    assert {p.function for p in blocks[0].points} == {"holding"}
    assert {p.function for p in blocks[1].points} == {"input"}


def test_unmerged_plan_is_one_request_per_point() -> None:
    points = [at(0), at(2), at(4, "uint16"), at(0, function="input")]
    blocks = plan_reads(points, merge=False)
    assert spans(blocks) == [(3, 0, 2), (3, 2, 2), (3, 4, 1), (4, 0, 2)]
    assert [b.points for b in blocks] == [(p,) for p in points]


def test_block_registers_slices_and_checks_length() -> None:
    a, b = at(100, "uint16", code="a"), at(103, "float32", code="b")
    [block] = plan_reads([a, b])
    assert (block.start, block.count) == (100, 5)
    regs = [7, 0, 0, 0x4366, 0x0000]
    got = {p.code: decode(p, r) for p, r in block_registers(block, regs)}
    assert got == {"a": 7.0, "b": 230.0}
    with pytest.raises(ValueError, match="expects 5 registers, got 4"):
        list(block_registers(block, regs[:4]))


@pytest.mark.parametrize(
    ("point", "match"),
    [
        (PointConfig(code="x", register=None), "needs a register"),
        (PointConfig(code="x", register=0, function="coil"), "holding or input"),
        (PointConfig(code="x", register=65535, type="float32"), "outside"),
        (PointConfig(code="x", register=-1), "outside"),
    ],
)
def test_plan_rejects_bad_points(point: PointConfig, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_reads([point])


def test_plan_negative_gap_rejected() -> None:
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([at(0)], max_gap=-1)


def test_empty_plan() -> None:
    assert plan_reads([]) == []


def test_64_bit_extremes_encode_exactly() -> None:
    assert encode(pt("int64"), (1 << 63) - 1) == [0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF]
    assert encode(pt("int64"), -(1 << 63)) == [0x8000, 0, 0, 0]
    assert encode(pt("uint64"), (1 << 64) - 1) == [0xFFFF] * 4
