"""Energy types: the GB/T 2589 table, site overrides, conversion to tonnes of standard coal."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from protocol import ENERGY_CATEGORIES, EnergyType, load_energy_types, to_tce

REQUIRED_KEYS = {
    "electricity", "raw_coal", "washed_coal", "coke", "crude_oil", "fuel_oil", "gasoline",
    "kerosene", "diesel", "lpg", "refinery_gas", "natural_gas", "natural_gas_oilfield",
    "natural_gas_gasfield", "heat", "steam_low_pressure", "water",
}

# The commonly quoted GB/T 2589-2008 Appendix A/B values (standards-facts.md), kgce per unit.
EXPECTED_FACTORS = {
    "electricity": (0.1229, "kWh"),
    "raw_coal": (0.7143, "kg"),
    "washed_coal": (0.9000, "kg"),
    "coke": (0.9714, "kg"),
    "crude_oil": (1.4286, "kg"),
    "fuel_oil": (1.4286, "kg"),
    "gasoline": (1.4714, "kg"),
    "kerosene": (1.4714, "kg"),
    "diesel": (1.4571, "kg"),
    "lpg": (1.7143, "kg"),
    "refinery_gas": (1.5714, "kg"),
    "natural_gas_oilfield": (1.3300, "m3"),
    "natural_gas_gasfield": (1.2143, "m3"),
    "heat": (0.03412, "MJ"),
    "steam_low_pressure": (0.1286, "kg"),
    "water": (0.2571, "t"),
}


def test_table_has_every_required_type() -> None:
    table = load_energy_types()
    assert REQUIRED_KEYS <= set(table)


@pytest.mark.parametrize(("key", "expected"), sorted(EXPECTED_FACTORS.items()))
def test_standard_factors(key: str, expected: tuple[float, str]) -> None:
    energy = load_energy_types()[key]
    assert (energy.factor, energy.unit) == expected
    assert energy.key == key
    assert not energy.overridden


def test_every_entry_is_complete_and_cites_a_source() -> None:
    for key, energy in load_energy_types().items():
        assert energy.name, key
        assert energy.category in ENERGY_CATEGORIES, key
        assert "GB/T 2589" in energy.source, key
        assert energy.factor > 0, key


def test_factors_follow_from_calorific_values() -> None:
    # 1 kgce = 7000 kcal (GB/T 2589-2008): a typo in either number shows up here.
    checked = 0
    for key, energy in load_energy_types().items():
        if energy.kcal is None:
            continue
        assert energy.factor == pytest.approx(energy.kcal / 7000, abs=6e-5), key
        checked += 1
    assert checked >= 15


def test_heat_factor_is_one_megajoule_over_a_kgce() -> None:
    assert load_energy_types()["heat"].factor == pytest.approx(1 / 29.3076, abs=5e-6)


def test_natural_gas_default_is_the_gas_field_value() -> None:
    table = load_energy_types()
    assert table["natural_gas"].factor == table["natural_gas_gasfield"].factor
    assert "oilfield" in table["natural_gas"].note


def test_electricity_notes_the_equal_value() -> None:
    assert "等价值" in load_energy_types()["electricity"].note


def test_entries_are_frozen_and_table_read_only() -> None:
    table = load_energy_types()
    with pytest.raises(dataclasses.FrozenInstanceError):
        table["coke"].factor = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        table["coke"] = table["coke"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("key", "amount", "tce"),
    [
        ("electricity", 10_000, 1.229),          # 10 MWh → 1.229 tce
        ("raw_coal", 1_000, 0.7143),             # 1 t of coal
        ("natural_gas_oilfield", 10_000, 13.3),  # 10^4 m3
        ("heat", 1_000_000, 34.12),              # 1 TJ
        ("water", 100, 0.02571),                 # 100 t
        ("diesel", 0, 0.0),
    ],
)
def test_to_tce(key: str, amount: float, tce: float) -> None:
    assert to_tce(key, amount, load_energy_types()) == pytest.approx(tce, rel=1e-12)


def test_to_tce_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"unknown energy type 'electricty' \(did you mean "
                                         r"'electricity'\?\)"):
        to_tce("electricty", 1.0, load_energy_types())


def test_kgce_of_one_type() -> None:
    assert load_energy_types()["coke"].to_kgce(2.0) == pytest.approx(1.9428)


def test_override_from_mapping() -> None:
    table = load_energy_types({"natural_gas": {"factor": 1.33}, "electricity": {"factor": 0.3}})
    assert table["natural_gas"].factor == 1.33
    assert table["natural_gas"].overridden
    assert table["natural_gas"].source == "site override"
    assert to_tce("electricity", 1000, table) == pytest.approx(0.3)
    # other entries and the standard table itself are untouched
    assert table["coke"] == load_energy_types()["coke"]
    assert load_energy_types()["natural_gas"].factor == 1.2143


def test_override_keeps_a_given_source_and_note() -> None:
    table = load_energy_types({"electricity": {"factor": 0.2996, "source": "platform 2026",
                                               "note": "equal value"}})
    assert (table["electricity"].source, table["electricity"].note) == ("platform 2026",
                                                                        "equal value")


def test_override_of_zero_is_allowed() -> None:
    assert load_energy_types({"water": {"factor": 0}})["water"].factor == 0.0


def test_override_from_file(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[energy.natural_gas]\nfactor = 1.2143\n\n[energy.heat]\nfactor = 0.0341\n",
                    encoding="utf-8")
    table = load_energy_types(path)
    assert table["heat"].factor == 0.0341
    assert load_energy_types(str(path))["natural_gas"].overridden


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"natral_gas": {"factor": 1.2}},
         r"unknown energy type 'natral_gas' \(did you mean 'natural_gas'\?\)"),
        ({"plutonium": {"factor": 1.2}}, r"unknown energy type 'plutonium'; known: coke"),
        ({"natural_gas": {"factor": -1.2}}, r"energy\.natural_gas\.factor must be a finite "
                                            r"number ≥ 0"),
        ({"heat": {"factor": math.nan}}, r"energy\.heat\.factor must be a finite"),
        ({"heat": {"factor": math.inf}}, r"energy\.heat\.factor must be a finite"),
        ({"heat": {"factor": "0.03"}}, r"energy\.heat\.factor must be a number"),
        ({"heat": {"factor": True}}, r"energy\.heat\.factor must be a number"),
        ({"heat": {"unit": "GJ"}}, r"energy\.heat: cannot override unit"),
        ({"heat": 0.03}, r"energy\.heat must be a table"),
        ({"heat": {"source": 3}}, r"energy\.heat\.source must be text"),
    ],
)
def test_bad_overrides_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_energy_types(overrides)


def test_bad_override_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[energy.coal]\nfactor = 0.7\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: unknown energy type 'coal'"):
        load_energy_types(path)
    path.write_text("[energy\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{path}: not valid TOML"):
        load_energy_types(path)
    path.write_text("[natural_gas]\nfactor = 1.2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unknown table\(s\) natural_gas; write overrides as"):
        load_energy_types(path)
    with pytest.raises(ValueError, match="cannot read energy overrides"):
        load_energy_types(tmp_path / "missing.toml")


def test_energy_type_is_a_plain_value() -> None:
    energy = EnergyType(key="x", name="x", unit="kg", factor=2.0, category="primary",
                        source="test")
    assert energy.to_kgce(3) == 6.0
