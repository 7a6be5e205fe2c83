"""Identifiers both ends agree on: gateway ids, point codes, region codes, data-item codes,
and the MQTT topics built from them.

Every validator returns its (unchanged) argument or raises ``ValueError`` whose message names
the value and says what a valid one looks like. Topics (CONTRACT.md, "MQTT topics")::

    kemon/v1/{unit}/{gateway}/up/{kind}      gateway → platform
    kemon/v1/{unit}/{gateway}/down/{kind}    platform → gateway

``unit`` is a unified social credit code (its check character verified), ``gateway`` a
gateway id, ``kind`` one topic level such as ``batch`` or ``status``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Literal

from ._credit import CreditCodeError, validate_credit_code

__all__ = [
    "DATA_CLASSES",
    "PROVINCE_CODES",
    "TOPIC_ROOT",
    "DataItemCode",
    "Direction",
    "Topic",
    "parse_data_item_code",
    "parse_topic",
    "topic",
    "topic_filter",
    "validate_gateway_id",
    "validate_kind",
    "validate_point_code",
    "validate_region_code",
]

log = logging.getLogger(__name__)

TOPIC_ROOT = "kemon/v1"
Direction = Literal["up", "down"]
_DIRECTIONS: tuple[Direction, ...] = ("up", "down")

_GATEWAY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")   # CONTRACT.md [gateway] id
_POINT_CODE = re.compile(r"[0-9A-Za-z._-]{1,64}")  # CONTRACT.md [[meter.point]] code
_KIND = re.compile(r"[A-Za-z0-9_-]{1,32}")         # one topic level, no wildcards
_REGION = re.compile(r"[0-9]{6}")                   # GB/T 2260: 6-digit division code

# GB/T 2260 first two digits: provinces, autonomous regions, municipalities (11-65),
# Taiwan (71), Hong Kong (81), Macao (82).
PROVINCE_CODES = frozenset({
    "11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36", "37",
    "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62", "63", "64",
    "65", "71", "81", "82",
})

# Data classes of the data-item code (standards-facts.md, from the Yunnan DB53/T 1026-2021
# schema and GB/T 37947 practice). 05-07 repeat the 01-03 categories there; what tells them
# apart was not confirmed, so they are named the same.
DATA_CLASSES = {
    "01": "primary energy",
    "02": "secondary energy",
    "03": "energy media",
    "04": "non-energy products",
    "05": "primary energy",
    "06": "secondary energy",
    "07": "energy media",
    "08": "efficiency indicators",
    "09": "business indicators",
    "10": "other",
}

# Data-item code layout (GB/T 37947 practice; Yunnan schema dataCode varchar(18)):
# process 2 + process unit 2 + equipment 4 + data class 2 + energy/product/indicator 4 + usage.
_DATA_ITEM_MIN = 16
_DATA_ITEM_MAX = 18


def validate_gateway_id(gateway: str) -> str:
    """A gateway id: 1-32 of A-Z a-z 0-9 _ -."""
    if not isinstance(gateway, str) or not _GATEWAY_ID.fullmatch(gateway):
        raise ValueError(f"{gateway!r} is not a gateway id: 1-32 of A-Z a-z 0-9 _ - "
                         "(e.g. GW0001)")
    return gateway


def validate_point_code(code: str) -> str:
    """A point (data-item) code as reported upstream: 1-64 of 0-9 A-Z a-z . _ -."""
    if not isinstance(code, str) or not _POINT_CODE.fullmatch(code):
        raise ValueError(f"{code!r} is not a point code: 1-64 of 0-9 A-Z a-z . _ - "
                         "(e.g. 0000000001000001)")
    return code


def validate_region_code(region: str) -> str:
    """A GB/T 2260 administrative division code: 6 digits under a known province."""
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise ValueError(f"{region!r} is not a region code: 6 digits (GB/T 2260, e.g. 320000)")
    if region[:2] not in PROVINCE_CODES:
        raise ValueError(f"{region!r} is not a region code: {region[:2]!r} is no province "
                         "of GB/T 2260 (11-65, 71, 81, 82)")
    return region


def validate_kind(kind: str) -> str:
    """A topic kind: one topic level of 1-32 A-Z a-z 0-9 _ -."""
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ValueError(f"{kind!r} is not a topic kind: 1-32 of A-Z a-z 0-9 _ - "
                         "(one topic level, e.g. batch)")
    return kind


@dataclass(frozen=True, slots=True)
class DataItemCode:
    """A data-item code split into its parts (all digit strings, leading zeros kept)."""

    process: str        # 2: production process, 00 = whole plant
    process_unit: str   # 2: process unit within the process
    equipment: str      # 4: key equipment, 0000 = plant/process level
    data_class: str     # 2: 01..10, see DATA_CLASSES
    item: str           # 4: energy / medium / product / indicator code, 0000 = total
    usage: str          # the rest (2-4 digits): usage

    def __str__(self) -> str:
        return (self.process + self.process_unit + self.equipment + self.data_class
                + self.item + self.usage)

    @property
    def data_class_name(self) -> str:
        """What the data class means (e.g. ``primary energy``)."""
        return DATA_CLASSES[self.data_class]


def parse_data_item_code(code: str) -> DataItemCode:
    """Split an all-digit data-item code of 16-18 digits; ``ValueError`` when it is not one.

    A point code need not be a data-item code; call this only where the structure is wanted.
    """
    if not isinstance(code, str) or not code.isascii() or not code.isdigit():
        raise ValueError(f"{code!r} is not a data-item code: it must be all digits")
    if not _DATA_ITEM_MIN <= len(code) <= _DATA_ITEM_MAX:
        raise ValueError(f"{code!r} is not a data-item code: {len(code)} digits, need "
                         f"{_DATA_ITEM_MIN}-{_DATA_ITEM_MAX} (process 2 + unit 2 + equipment 4"
                         " + data class 2 + item 4 + usage 2-4)")
    parsed = DataItemCode(process=code[0:2], process_unit=code[2:4], equipment=code[4:8],
                          data_class=code[8:10], item=code[10:14], usage=code[14:])
    if parsed.data_class not in DATA_CLASSES:
        raise ValueError(f"{code!r} is not a data-item code: data class (digits 9-10) "
                         f"{parsed.data_class!r} is not one of 01-10")
    return parsed


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed Kemon topic; ``str(topic)`` gives it back."""

    unit: str
    gateway: str
    direction: Direction
    kind: str

    def __str__(self) -> str:
        return f"{TOPIC_ROOT}/{self.unit}/{self.gateway}/{self.direction}/{self.kind}"


def topic(unit: str, gateway: str, direction: Direction, kind: str) -> str:
    """``kemon/v1/{unit}/{gateway}/{direction}/{kind}``, each part validated.

    ``unit`` must be a unified social credit code in its canonical (upper-case) form: MQTT
    topics are case-sensitive and broker ACLs match them exactly.
    """
    _check_unit(unit)
    validate_gateway_id(gateway)
    _check_direction(direction)
    validate_kind(kind)
    return f"{TOPIC_ROOT}/{unit}/{gateway}/{direction}/{kind}"


def parse_topic(text: str) -> Topic:
    """The parts of a Kemon topic; ``ValueError`` saying which part is wrong otherwise."""
    parts = text.split("/")
    if len(parts) != 6 or "/".join(parts[:2]) != TOPIC_ROOT:
        raise ValueError(f"{text!r} is not a Kemon topic: expected "
                         f"{TOPIC_ROOT}/{{unit}}/{{gateway}}/up|down/{{kind}}")
    _, _, unit, gateway, direction, kind = parts
    try:
        _check_unit(unit)
        validate_gateway_id(gateway)
        checked = _check_direction(direction)
        validate_kind(kind)
    except ValueError as exc:
        raise ValueError(f"topic {text!r}: {exc}") from None
    return Topic(unit=unit, gateway=gateway, direction=checked, kind=kind)


def topic_filter(direction: Direction, *, unit: str | None = None,
                 gateway: str | None = None, kind: str | None = None) -> str:
    """A subscription filter; a part left ``None`` is a wildcard (``+``; ``#`` for kind).

    ``topic_filter("up")`` is ``kemon/v1/+/+/up/#``; a gateway reads
    ``topic_filter("down", unit=u, gateway=g)``.
    """
    if unit is not None:
        _check_unit(unit)
    if gateway is not None:
        validate_gateway_id(gateway)
    _check_direction(direction)
    if kind is not None:
        validate_kind(kind)
    return "/".join((TOPIC_ROOT, unit or "+", gateway or "+", direction, kind or "#"))


def _check_unit(unit: str) -> None:
    try:
        canonical = validate_credit_code(unit)
    except CreditCodeError as exc:
        raise ValueError(f"unit: {exc}") from None
    if canonical != unit:
        raise ValueError(f"unit {unit!r} must be written {canonical!r} in a topic")


def _check_direction(direction: str) -> Direction:
    for known in _DIRECTIONS:
        if direction == known:
            return known
    raise ValueError(f"direction {direction!r} must be 'up' or 'down'")
