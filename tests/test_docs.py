"""Every command has help with an example; every configuration key is documented."""

from __future__ import annotations

import re
from collections.abc import Iterator

import click
import pytest

from kemon.cli import cli

from .conftest import ROOT


def walk(group: click.Group, prefix: str = "kemon") -> Iterator[tuple[str, click.Command]]:
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from walk(command, path)


COMMANDS = list(walk(cli))


def test_the_walk_finds_the_contract_commands() -> None:
    names = {path for path, _ in COMMANDS}
    assert {"kemon gateway run", "kemon gateway check", "kemon gateway readings",
            "kemon sim", "kemon demo", "kemon collector run", "kemon collector readings",
            "kemon collector status", "kemon collector check"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_command_has_help_with_an_example(path: str, command: click.Command) -> None:
    text = command.help or ""
    assert len(text.strip()) > 20, f"{path} has no help text"
    assert "Example" in text, f"{path}: help has no example"
    assert path in text or isinstance(command, click.Group) or "kemon" in text


def _config_keys() -> set[str]:
    """Keys the loaders read: ``t.get("key", …)`` and friends, and the key tuples they loop over."""
    keys: set[str] = set()
    for name in ("_config.py", "_points.py", "_profiles.py"):
        source = (ROOT / "gateway" / name).read_text(encoding="utf-8")
        keys |= set(re.findall(r'\.(?:get|req|choice|has|tables|table)\("([a-z_]+)"', source))
        for group in re.findall(r'(?:_KEYS = |for name in )\(([^)]*)\)', source):
            keys |= set(re.findall(r'"([a-z_]+)"', group))
    return keys


def test_every_configuration_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    keys = _config_keys()
    assert {"id", "unit", "data_dir", "register", "word_order", "max_rate", "profile"} <= keys
    missing = sorted(k for k in keys
                     if f"`{k}`" not in doc and f"[{k}]" not in doc and f"[[{k}]]" not in doc)
    assert not missing, f"docs/configuration.md does not document: {missing}"


def _collector_config_keys() -> set[str]:
    """Keys the collector's loader reads through its Table getters (protocol/_toml_table.py),
    and the key tuples it loops over."""
    source = (ROOT / "collector" / "_config.py").read_text(encoding="utf-8")
    getters = r"(?:req|choice|integer|number|texts|table|tables|allow)"
    keys = set(re.findall(rf'\.{getters}\(\s*"([a-z_]+)"', source))
    # Table.get names a type after the key (a dict's .get does not)
    keys |= set(re.findall(r'\.get\(\s*"([a-z_]+)", (?:str|int|float|bool)\b', source))
    for group in re.findall(r'for (?:key|name) in \(([^)]*)\)', source):
        keys |= set(re.findall(r'"([a-z_]+)"', group))
    return keys


def test_every_collector_configuration_key_is_documented() -> None:
    doc = (ROOT / "docs" / "collector.md").read_text(encoding="utf-8")
    keys = _collector_config_keys()
    assert {"collector", "broker", "upstream", "role", "region", "database", "trusted_ca",
            "queue", "url", "insecure", "ca_file", "cert_file", "key_file", "share_group",
            "client_id", "keepalive", "name", "rate_limit", "max_inflight"} <= keys
    missing = sorted(k for k in keys
                     if f"`{k}`" not in doc and f"[{k}]" not in doc and f"[[{k}]]" not in doc)
    assert not missing, f"docs/collector.md does not document: {missing}"


def test_the_collector_example_shows_every_key() -> None:
    """The complete example in docs/collector.md (what users copy) names every key, set or
    commented out."""
    doc = (ROOT / "docs" / "collector.md").read_text(encoding="utf-8")
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    keys = set(re.findall(r"^#? ?([a-z_]+) = ", example, re.MULTILINE))
    keys |= set(re.findall(r"^\[\[?([a-z_]+)\]\]?", example, re.MULTILINE))
    assert keys == _collector_config_keys()
