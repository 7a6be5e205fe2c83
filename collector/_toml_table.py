"""Typed reads from a parsed TOML document, every failure located (file, key path, fix).

The collector's own helper (``collector`` never imports ``gateway``): a :class:`Table` wraps
one TOML table at a key path such as ``upstream[1]``; each typed getter records the key as
known, and :meth:`Table.done` refuses the keys nobody read, listing the allowed ones.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "Table", "read_toml"]


class ConfigError(ValueError):
    """A configuration problem, located: ``file``, ``key`` (``upstream[1].url``; empty for the
    whole file) and ``message`` (what is wrong and what to do)."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


def _describe(value: object) -> str:
    """``value`` as a TOML user would name it: ``a string "x"``, ``an integer 3`` …"""
    if isinstance(value, bool):
        return f"a boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"a string {value!r}"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a number {value!r}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"       # dates and times


class Table:
    """One TOML table of ``file`` at ``path`` (``""`` for the top level)."""

    def __init__(self, file: Path, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"must be a table, not {_describe(data)}")
        self.file = file
        self.path = path
        self.data: dict[str, Any] = data
        self._known: set[str] = set()

    # -- locating ----------------------------------------------------------------------------
    def where(self, name: str) -> str:
        """The key path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.where(name), message)

    def has(self, name: str) -> bool:
        self._known.add(name)
        return name in self.data

    def _raw(self, name: str, required: bool, hint: str) -> object:
        self._known.add(name)
        if name not in self.data and required:
            raise self.error(name, "is missing" + (f"; {hint}" if hint else ""))
        return self.data.get(name)

    # -- typed getters -----------------------------------------------------------------------
    def text(self, name: str, default: str | None = None, *, required: bool = False,
             hint: str = "") -> str | None:
        value = self._raw(name, required, hint)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, not {_describe(value)}"
                             + (f"; {hint}" if hint else ""))
        return value

    def required_text(self, name: str, hint: str = "") -> str:
        value = self.text(name, required=True, hint=hint)
        assert value is not None
        return value

    def choice(self, name: str, options: tuple[str, ...], hint: str = "") -> str:
        value = self.required_text(name, hint or " | ".join(options))
        if value not in options:
            raise self.error(name, f"{value!r} is not one of: {', '.join(options)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int, unit: str = "") -> int:
        value = self._raw(name, False, "")
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(name, f"must be an integer, not {_describe(value)}")
        if not low <= value <= high:
            raise self.error(name, f"{value} is out of range: {low}..{high}"
                             + (f" {unit}" if unit else ""))
        return value

    def number(self, name: str, default: float, *, above: float, unit: str = "") -> float:
        """A finite number (an integer is accepted) greater than ``above``."""
        value = self._raw(name, False, "")
        if value is None:
            return default
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self.error(name, f"must be a number, not {_describe(value)}")
        number = float(value)
        if not math.isfinite(number) or number <= above:
            raise self.error(name, f"must be a number above {above:g}"
                             + (f" ({unit})" if unit else "") + f", not {value!r}")
        return number

    def flag(self, name: str, default: bool) -> bool:
        value = self._raw(name, False, "")
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, not {_describe(value)}")
        return value

    def texts(self, name: str) -> list[str] | None:
        """A string or an array of strings (``None`` when absent)."""
        value = self._raw(name, False, "")
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise self.error(name, f"must be a string or an array of strings, not "
                                   f"{_describe(value)}")
        return items

    # -- nested tables -----------------------------------------------------------------------
    def section(self, name: str, hint: str) -> Table:
        """A required ``[name]`` table."""
        return Table(self.file, self.where(name), self._raw(name, True, hint))

    def array(self, name: str) -> list[Table]:
        """An optional array of tables (``[[name]]``), each located as ``name[i]``."""
        value = self._raw(name, False, "")
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{name}]]), not "
                                   f"{_describe(value)}")
        return [Table(self.file, f"{self.where(name)}[{i}]", item)
                for i, item in enumerate(value)]

    def done(self) -> None:
        """Refuse every key that no getter asked for, naming the allowed ones."""
        unknown = [k for k in self.data if k not in self._known]
        if unknown:
            raise self.error(unknown[0], "unknown key; allowed here: "
                             + ", ".join(sorted(self._known)))


def read_toml(file: Path) -> dict[str, Any]:
    """Parse ``file``: unreadable, not UTF-8 or not TOML is a one-line ConfigError."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"is not UTF-8 text (byte {exc.start}); save it as "
                                    "UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"is not valid TOML: {exc}") from None
