"""Identifiers: gateway ids, point codes, region codes, data-item codes and MQTT topics."""

from __future__ import annotations

import dataclasses

import pytest

from protocol import (
    DataItemCode,
    Topic,
    make_credit_code,
    parse_data_item_code,
    parse_topic,
    topic,
    topic_filter,
    validate_gateway_id,
    validate_kind,
    validate_point_code,
    validate_region_code,
)

UNIT = "91320100MA1ABCDE0C"  # CONTRACT.md's sample unit (its 18th character is valid)


@pytest.mark.parametrize("gid", ["GW0001", "a", "gw_1-B", "X" * 32])
def test_gateway_ids(gid: str) -> None:
    assert validate_gateway_id(gid) == gid


@pytest.mark.parametrize("gid", ["", "X" * 33, "gw 1", "gw/1", "gw+", "网关", "gw.1", "gw1\n"])
def test_bad_gateway_ids(gid: str) -> None:
    with pytest.raises(ValueError, match="is not a gateway id: 1-32 of A-Z a-z 0-9 _ -"):
        validate_gateway_id(gid)


@pytest.mark.parametrize("code", ["0000000001000001", "p.1_a-B", "9" * 64])
def test_point_codes(code: str) -> None:
    assert validate_point_code(code) == code


@pytest.mark.parametrize("code", ["", "9" * 65, "a/b", "a b", "a#", "a+", "点"])
def test_bad_point_codes(code: str) -> None:
    with pytest.raises(ValueError, match="is not a point code: 1-64 of"):
        validate_point_code(code)


@pytest.mark.parametrize("region", ["320000", "320100", "110108", "650000", "810000", "710000"])
def test_region_codes(region: str) -> None:
    assert validate_region_code(region) == region


@pytest.mark.parametrize(
    ("region", "message"),
    [("32000", "6 digits"), ("3200000", "6 digits"), ("32000A", "6 digits"),
     ("990000", "'99' is no province"), ("000000", "'00' is no province"),
     ("160000", "'16' is no province")],
)
def test_bad_region_codes(region: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_region_code(region)


def test_contract_point_code_is_a_data_item_code() -> None:
    parsed = parse_data_item_code("0000000001000001")
    assert parsed == DataItemCode(process="00", process_unit="00", equipment="0000",
                                  data_class="01", item="0000", usage="01")
    assert parsed.data_class_name == "primary energy"
    assert str(parsed) == "0000000001000001"


def test_data_item_code_parts_and_longer_usage() -> None:
    parsed = parse_data_item_code("031200450801230102")
    assert (parsed.process, parsed.process_unit, parsed.equipment, parsed.data_class,
            parsed.item, parsed.usage) == ("03", "12", "0045", "08", "0123", "0102")
    assert parsed.data_class_name == "efficiency indicators"
    assert str(parsed) == "031200450801230102"
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.usage = "00"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("code", "message"),
    [("000000000100000", "15 digits, need 16-18"),
     ("0000000001000001234", "19 digits, need 16-18"),
     ("00000000010000A1", "all digits"),
     ("０000000001000001", "all digits"),   # a full-width digit is not ASCII
     ("0000000000000001", "data class .* '00' is not one of 01-10"),
     ("0000000011000001", "data class .* '11' is not one of 01-10")],
)
def test_bad_data_item_codes(code: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_data_item_code(code)


def test_topic_round_trip() -> None:
    text = topic(UNIT, "GW0001", "up", "batch")
    assert text == "kemon/v1/91320100MA1ABCDE0C/GW0001/up/batch"
    parsed = parse_topic(text)
    assert parsed == Topic(unit=UNIT, gateway="GW0001", direction="up", kind="batch")
    assert str(parsed) == text
    down = parse_topic(topic(make_credit_code(), "gw-2", "down", "resend"))
    assert (down.direction, down.kind) == ("down", "resend")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("91320100MA1ABCDE0D", "GW0001", "up", "batch"), r"unit: .*should be 'C', got 'D'"),
        (("91320100ma1abcde0c", "GW0001", "up", "batch"), "must be written '91320100MA1ABCDE0C'"),
        ((UNIT, "GW/1", "up", "batch"), "is not a gateway id"),
        ((UNIT, "GW0001", "sideways", "batch"), "direction 'sideways' must be 'up' or 'down'"),
        ((UNIT, "GW0001", "up", "a/b"), "is not a topic kind"),
        ((UNIT, "GW0001", "up", "#"), "is not a topic kind"),
        ((UNIT, "GW0001", "up", ""), "is not a topic kind"),
    ],
)
def test_topic_rejects_bad_parts(args: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        topic(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kemon/v2/91320100MA1ABCDE0C/GW0001/up/batch", "is not a Kemon topic"),
        ("kemon/v1/91320100MA1ABCDE0C/GW0001/up", "is not a Kemon topic"),
        ("kemon/v1/91320100MA1ABCDE0C/GW0001/up/batch/x", "is not a Kemon topic"),
        ("/kemon/v1/91320100MA1ABCDE0C/GW0001/up/batch", "is not a Kemon topic"),
        ("kemon/v1/91320100MA1ABCDE0D/GW0001/up/batch", "unit: .*check character"),
        ("kemon/v1/+/GW0001/up/batch", "unit: .*has 1"),
        ("kemon/v1/91320100MA1ABCDE0C/GW 1/up/batch", "is not a gateway id"),
        ("kemon/v1/91320100MA1ABCDE0C/GW0001/UP/batch", "direction 'UP'"),
        ("kemon/v1/91320100MA1ABCDE0C/GW0001/down/+", "is not a topic kind"),
    ],
)
def test_parse_topic_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_topic(text)
    assert repr(text) in str(info.value)


def test_topic_filters() -> None:
    assert topic_filter("up") == "kemon/v1/+/+/up/#"
    assert topic_filter("down", unit=UNIT, gateway="GW0001") == \
        "kemon/v1/91320100MA1ABCDE0C/GW0001/down/#"
    assert topic_filter("up", kind="status") == "kemon/v1/+/+/up/status"
    with pytest.raises(ValueError, match="is not a gateway id"):
        topic_filter("down", unit=UNIT, gateway="+")
    with pytest.raises(ValueError, match="direction"):
        topic_filter("both")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["batch", "status", "ota-offer", "a_1"])
def test_kinds(kind: str) -> None:
    assert validate_kind(kind) == kind
