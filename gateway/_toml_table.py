"""Reading a TOML table with located errors: every key is checked for presence and type, and
keys nobody asked for are reported as unknown, with the allowed ones listed."""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from ._errors import ConfigError

T = TypeVar("T")

_TYPE_WORDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


class Table:
    """One TOML table at ``path`` (e.g. ``meter[2].point[0]``) of ``file``."""

    def __init__(self, file: Path, path: str, data: Any) -> None:
        self.file = file
        self.path = path
        if not isinstance(data, dict):
            raise ConfigError(file, path, f"must be a table, not {_word(data)}")
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), message)

    def has(self, name: str) -> bool:
        return name in self.data

    def get(self, name: str, kind: type[T], default: T | None = None, *, required: bool = False,
            hint: str = "") -> T | None:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "is missing" + (f"; {hint}" if hint else ""))
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be {_TYPE_WORDS.get(kind, kind.__name__)}, "
                                   f"not {_word(value)} {value!r}" + (f"; {hint}" if hint else ""))
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(name, f"must be a finite number, not {value!r}")
        return value

    def req(self, name: str, kind: type[T], hint: str = "") -> T:
        value = self.get(name, kind, required=True, hint=hint)
        assert value is not None
        return value

    def choice(self, name: str, choices: Iterable[str], default: str | None = None) -> str:
        options = tuple(choices)
        value = self.get(name, str, default, required=default is None)
        assert value is not None
        if value not in options:
            raise self.error(name, f"{value!r} is not one of {', '.join(options)}")
        return value

    def check(self, name: str, value: T, ok: Callable[[T], bool], message: str) -> T:
        if not ok(value):
            raise self.error(name, message)
        return value

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``), each located as ``name[i]``."""
        items = self.get(name, list, [])
        assert items is not None
        return [Table(self.file, f"{self.key(name)}[{i}]", item) for i, item in enumerate(items)]

    def table(self, name: str) -> Table:
        return Table(self.file, self.key(name), self.get(name, dict, {}))

    def done(self) -> None:
        """Refuse keys that were never read."""
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            allowed = ", ".join(sorted(self.used))
            raise self.error(unknown[0], f"unknown key; allowed here: {allowed}")


def _word(value: Any) -> str:
    for kind, word in _TYPE_WORDS.items():
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return word
    return type(value).__name__


def read_toml(file: Path) -> dict[str, Any]:
    """Parse ``file``; every failure (unreadable, not UTF-8, bad syntax) is a ConfigError."""
    try:
        with file.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"not valid TOML: {exc}") from None
