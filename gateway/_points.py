"""Parsing ``[[meter.point]]`` and profile ``[[point]]`` tables into field dictionaries.

Profiles and meters share one point syntax; a meter may override a profile's point by ``key``.
The fields are merged first and turned into ``PointConfig`` once, so every check runs on the
final point whichever file each field came from.
"""

from __future__ import annotations

import math
import re
from typing import Any

from protocol._toml_table import Table

from ._model import DATA_TYPES

POINT_CODE_RE = re.compile(r"^[0-9A-Za-z._-]{1,64}$")
_DLT645_DI_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_CJT188_DI_RE = re.compile(r"^[0-9A-Fa-f]{4}$")

_STR_KEYS = ("code", "key", "name", "unit", "energy", "di", "field")
_FLOAT_KEYS = ("scale", "max_rate", "counter_max")


def read_point_fields(t: Table) -> dict[str, Any]:
    """Every key the table sets, type-checked; unknown keys refused."""
    out: dict[str, Any] = {}
    for name in _STR_KEYS:
        if (v := t.get(name, str)) is not None:
            out[name] = v
    for name in _FLOAT_KEYS:
        if (f := t.get(name, float)) is not None:
            out[name] = f
    if (reg := t.get("register", int)) is not None:
        out["register"] = t.check("register", reg, lambda r: 0 <= r <= 65535,
                                  f"{reg} is outside 0..65535 (0-based register address)")
    if t.has("function"):
        out["function"] = t.choice("function", ("holding", "input"))
    if t.has("type"):
        out["type"] = t.choice("type", DATA_TYPES)
    for name in ("word_order", "byte_order"):
        if t.has(name):
            out[name] = t.choice(name, ("big", "little"))
    if (counter := t.get("counter", bool)) is not None:
        out["counter"] = counter
    if (bounds := t.get("plausible", list)) is not None:
        out["plausible"] = _bounds(t, bounds)
    t.done()
    return out


def _bounds(t: Table, value: list[Any]) -> tuple[float, float]:
    """``plausible = [low, high]``: two finite numbers, low below high."""
    numbers = [float(v) for v in value
               if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)]
    if len(value) != 2 or len(numbers) != 2:
        raise t.error("plausible", f"must be [low, high], two numbers, not {value!r}")
    low, high = numbers
    if low >= high:
        raise t.error("plausible", f"[{low:g}, {high:g}]: low must be below high")
    return low, high


def check_point(t: Table, fields: dict[str, Any], protocol: str,
                energy_keys: frozenset[str]) -> None:
    """Checks that need the merged point and the bus protocol; errors are located at ``t``."""
    code = fields.get("code", "")
    if not POINT_CODE_RE.match(code):
        raise t.error("code", f"{code!r} is not a point code: 1-64 of 0-9 A-Z a-z . _ -")
    if fields.get("scale", 1.0) == 0:
        raise t.error("scale", "must not be 0")
    for name in ("max_rate", "counter_max"):
        if name in fields and fields[name] <= 0:
            raise t.error(name, "must be greater than 0")
    energy = fields.get("energy")
    if energy is not None and energy_keys and energy not in energy_keys:
        raise t.error("energy", f"{energy!r} is not a known energy type; "
                                f"use one of {', '.join(sorted(energy_keys))}")
    if protocol == "modbus":
        if "register" not in fields:
            raise t.error("register", "is missing; a Modbus point needs its 0-based register")
        if "di" in fields:
            raise t.error("di", "is for DL/T 645 and CJ/T 188 meters, not Modbus")
    elif protocol == "dlt645":
        di = fields.get("di")
        if di is None or not _DLT645_DI_RE.match(di):
            raise t.error("di", f"{di!r} is not a DL/T 645-2007 data identifier "
                                "(8 hex digits, e.g. \"00010000\")")
    elif protocol == "cjt188":
        di = fields.get("di")
        if di is None or not _CJT188_DI_RE.match(di):
            raise t.error("di", f"{di!r} is not a CJ/T 188 data identifier "
                                "(4 hex digits, e.g. \"901F\")")
