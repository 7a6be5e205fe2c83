"""Energy types and their standard-coal factors (GB/T 2589), overridable per site.

The table lives in ``protocol/data/energy.toml`` with the source of every number. A factor is
kilograms of standard coal equivalent (kgce) per one physical unit of the energy (kWh, kg, m3,
MJ, t); :func:`to_tce` turns an amount in that unit into tonnes of standard coal (tce).

A site (or the platform it reports to) may publish its own factors; they override the table::

    [energy.natural_gas]
    factor = 1.3300
    source = "provincial platform notice 2026-3"   # optional

Overrides are validated: an unknown energy key, an unknown field, or a factor that is not a
non-negative finite number is a ``ValueError`` naming the key.
"""

from __future__ import annotations

import difflib
import logging
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = ["ENERGY_CATEGORIES", "EnergyType", "load_energy_types", "to_tce"]

log = logging.getLogger(__name__)

# Data classes 01/02/03 of the data-item code (standards-facts.md): primary energy, secondary
# energy, energy media (耗能工质).
ENERGY_CATEGORIES = ("primary", "secondary", "medium")

_OVERRIDABLE = ("factor", "source", "note")
_FIELDS = ("name", "unit", "factor", "kcal", "category", "source", "note")


@dataclass(frozen=True, slots=True)
class EnergyType:
    """One energy type: ``factor`` kgce per one ``unit``; ``source`` says where it comes from."""

    key: str
    name: str                 # Chinese name, as the standard writes it
    unit: str                 # physical unit the factor applies to
    factor: float             # kgce per unit
    category: str             # primary | secondary | medium
    source: str
    note: str = ""
    kcal: float | None = None  # net calorific value per unit behind the factor, if given
    overridden: bool = False  # True when a site override replaced the standard's factor

    def to_kgce(self, amount: float) -> float:
        """Kilograms of standard coal for ``amount`` in this type's ``unit``."""
        return amount * self.factor


def load_energy_types(
    overrides: Mapping[str, Any] | str | Path | None = None,
) -> Mapping[str, EnergyType]:
    """The energy table (read-only mapping key → :class:`EnergyType`), with site overrides.

    ``overrides`` is either a mapping shaped like the ``[energy]`` table of a configuration
    (``{"natural_gas": {"factor": 1.33}}``) or the path of a TOML file holding such tables
    (``[energy.natural_gas]`` …). Raises ``ValueError`` naming the key when an override is bad.
    """
    table = dict(_standard_table())
    if overrides is None:
        return MappingProxyType(table)
    where = ""
    if isinstance(overrides, str | Path):
        path = Path(overrides)
        where = f"{path}: "
        overrides = _read_override_file(path)
    if not isinstance(overrides, Mapping):
        raise ValueError(f"{where}energy overrides must be a table of energy types")
    for key, fields in overrides.items():
        table[key] = _apply_override(table, key, fields, where)
    return MappingProxyType(table)


def to_tce(energy_key: str, amount: float, table: Mapping[str, EnergyType]) -> float:
    """Tonnes of standard coal for ``amount`` of ``energy_key`` (amount in the type's unit).

    tce = amount × factor (kgce/unit) ÷ 1000. Raises ``ValueError`` for an unknown key.
    """
    try:
        energy = table[energy_key]
    except KeyError:
        raise ValueError(_unknown_key(energy_key, table)) from None
    return energy.to_kgce(amount) / 1000.0


@cache
def _standard_table() -> Mapping[str, EnergyType]:
    text = resources.files("protocol").joinpath("data/energy.toml").read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    return MappingProxyType(
        {key: _energy_type(key, fields) for key, fields in raw["energy"].items()}
    )


def _energy_type(key: str, fields: Mapping[str, Any]) -> EnergyType:
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"energy.{key}: unknown field(s) {', '.join(sorted(unknown))}")
    if fields["category"] not in ENERGY_CATEGORIES:
        raise ValueError(f"energy.{key}.category: {fields['category']!r} is not one of "
                         f"{', '.join(ENERGY_CATEGORIES)}")
    kcal = fields.get("kcal")
    return EnergyType(
        key=key,
        name=str(fields["name"]),
        unit=str(fields["unit"]),
        factor=_factor(key, fields["factor"], ""),
        category=str(fields["category"]),
        source=str(fields["source"]),
        note=str(fields.get("note", "")),
        kcal=None if kcal is None else float(kcal),
    )


def _read_override_file(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read energy overrides ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    extra = set(raw) - {"energy"}
    if extra:
        raise ValueError(f"{path}: unknown table(s) {', '.join(sorted(extra))}; "
                         "write overrides as [energy.<key>] tables")
    energy = raw.get("energy", {})
    assert isinstance(energy, dict)  # tomllib gives a table for a dotted table name
    return energy


def _apply_override(
    table: Mapping[str, EnergyType], key: object, fields: object, where: str,
) -> EnergyType:
    if not isinstance(key, str) or key not in table:
        raise ValueError(where + _unknown_key(key, table))
    if not isinstance(fields, Mapping):
        raise ValueError(f"{where}energy.{key} must be a table, e.g. [energy.{key}] factor = 1.0")
    unknown = set(fields) - set(_OVERRIDABLE)
    if unknown:
        raise ValueError(f"{where}energy.{key}: cannot override {', '.join(sorted(unknown))}; "
                         f"a site may set {', '.join(_OVERRIDABLE)}")
    base = table[key]
    changes: dict[str, Any] = {}
    if "factor" in fields:
        changes["factor"] = _factor(key, fields["factor"], where)
        changes["overridden"] = True
        changes["source"] = "site override"
        changes["kcal"] = None
    for name in ("source", "note"):
        if name in fields:
            if not isinstance(fields[name], str):
                raise ValueError(f"{where}energy.{key}.{name} must be text")
            changes[name] = fields[name]
    log.debug("energy type %s overridden: %s", key, changes)
    return replace(base, **changes)


def _factor(key: str, value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}energy.{key}.factor must be a number (kgce per unit), "
                         f"not {value!r}")
    factor = float(value)
    if not math.isfinite(factor) or factor < 0:
        raise ValueError(f"{where}energy.{key}.factor must be a finite number ≥ 0 "
                         f"(kgce per unit), not {value!r}")
    return factor


def _unknown_key(key: object, table: Mapping[str, EnergyType]) -> str:
    known = sorted(table)
    hint = ""
    if isinstance(key, str):
        close = difflib.get_close_matches(key, known, n=1)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
    return f"unknown energy type {key!r}{hint}; known: {', '.join(known)}"
