"""The shared TOML-table helper (protocol/_toml_table.py) under both configuration loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway._errors import ConfigError as GatewayConfigError
from gateway._errors import GatewayError
from protocol._toml_table import ConfigError, Table

FILE = Path("site.toml")


def message(call: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as info:
        call()
    return str(info.value)


def test_getters_read_typed_values_and_defaults() -> None:
    t = Table(FILE, "bus[1]", {"name": "a", "timeout": 2, "on": True, "ca": "x.pem"})
    assert t.req("name", str) == "a"
    assert t.get("timeout", float, 1.0) == 2.0 and isinstance(t.get("timeout", float), float)
    assert t.get("on", bool, False) is True
    assert t.get("retries", int, 3) == 3 and t.get("host", str) is None
    assert t.texts("ca") == ["x.pem"] and t.texts("absent") is None
    assert t.choice("parity", ("N", "E"), "E") == "E"
    assert t.integer("queue", 7, 1, 10) == 7
    t.done()


@pytest.mark.parametrize(("data", "call", "text"), [
    ({}, lambda t: t.req("url", str, hint="e.g. url = 1"),
     "site.toml: up[1].url: is missing; e.g. url = 1"),
    ({"n": True}, lambda t: t.get("n", int), "up[1].n: must be an integer, not a boolean true"),
    ({"n": "5"}, lambda t: t.get("n", float), "up[1].n: must be a number, not a string '5'"),
    ({"n": float("nan")}, lambda t: t.get("n", float), "up[1].n: must be a finite number, not nan"),
    ({"r": "x"}, lambda t: t.choice("r", ("a", "b")), "up[1].r: 'x' is not one of: a, b"),
    ({}, lambda t: t.choice("r", ("a", "b")), "up[1].r: is missing; a | b"),
    ({"q": 0}, lambda t: t.integer("q", 5, 1, 9, "messages"),
     "up[1].q: 0 is out of range: 1..9 messages"),
    ({"q": 0}, lambda t: t.number("q", 5.0, above=0, unit="per second"),
     "up[1].q: must be a number above 0 (per second), not 0"),
    ({"q": [1]}, lambda t: t.texts("q"),
     "up[1].q: must be a string or an array of strings, not an array"),
    ({"p": 3}, lambda t: t.tables("p"),
     "up[1].p: must be an array of tables ([[p]]), not an integer 3"),
    ({"p": [1]}, lambda t: t.tables("p"), "up[1].p[0]: must be a table, not an integer 1"),
    ({"s": "x"}, lambda t: t.table("s"), "up[1].s: must be a table, not a string 'x'"),
    ({}, lambda t: t.table("s", required=True, hint="add [s]"), "up[1].s: is missing; add [s]"),
])
def test_every_error_is_one_located_line(data: dict[str, object], call: object, text: str) -> None:
    t = Table(FILE, "up[1]", data)
    assert callable(call)
    assert message(lambda: call(t)).endswith(text)


def test_done_names_the_first_unknown_key_and_the_allowed_ones() -> None:
    t = Table(FILE, "", {"zeta": 1, "alpha": 2, "b": 3})
    assert t.has("zeta") and not t.has("absent")
    t.allow("b")
    t.get("alpha", int)
    assert message(t.done) == "site.toml: zeta: unknown key; allowed here: alpha, b"
    t.allow("zeta")     # has() alone does not make a key known; allow() does
    t.done()


def test_the_callers_error_class_is_raised_down_to_nested_tables(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text("[[bus]]\nname = 1\n", encoding="utf-8")
    top = Table.from_file(path, GatewayConfigError)
    (bus,) = top.tables("bus")
    with pytest.raises(GatewayConfigError) as info:
        bus.req("name", str)
    assert isinstance(info.value, GatewayError) and info.value.key == "bus[0].name"
    path.write_bytes(b"\xff")
    with pytest.raises(GatewayConfigError, match="is not UTF-8 text"):
        Table.from_file(path, GatewayConfigError)
