"""Typed reads from a parsed TOML document, every failure one located line (file, key, fix).

The one helper under both the gateway's and the collector's configuration loaders: a
:class:`Table` wraps one TOML table at a key path such as ``meter[2].point[0]`` or
``upstream[1]``; each getter checks presence and type and records the key as known, and
:meth:`Table.done` refuses the keys nobody read, listing the allowed ones.

Errors are built by the ``error`` factory a table is given (the caller's own exception class,
called as ``error(file, key, message)``); :class:`ConfigError` when none is.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

__all__ = ["ConfigError", "ErrorFactory", "Table", "read_toml"]

T = TypeVar("T")

ErrorFactory = Callable[[Path, str, str], Exception]
"""Builds the exception for a problem at ``key`` (empty: the whole file) of ``file``."""


class ConfigError(ValueError):
    """A configuration problem, located: ``file``, ``key`` (``upstream[1].url``; empty for the
    whole file) and ``message`` (what is wrong and what to do)."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        super().__init__(f"{self.file}: {key}: {message}" if key else f"{self.file}: {message}")


_KIND_WORDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "an array",
    dict: "a table",
}


def _describe(value: object) -> str:
    """``value`` as a TOML user would name it: ``a string 'x'``, ``an integer 3`` …"""
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


def _hinted(message: str, hint: str) -> str:
    return f"{message}; {hint}" if hint else message


class Table:
    """One TOML table of ``file`` at ``path`` (``""`` for the top level)."""

    def __init__(self, file: Path, path: str, data: object,
                 error: ErrorFactory = ConfigError) -> None:
        if not isinstance(data, dict):
            raise error(file, path, f"must be a table, not {_describe(data)}")
        self.file = file
        self.path = path
        self.data: dict[str, Any] = data
        self._error = error
        self._known: set[str] = set()

    @classmethod
    def from_file(cls, file: Path, error: ErrorFactory = ConfigError) -> Table:
        """The top-level table of the TOML file ``file``."""
        return cls(file, "", read_toml(file, error), error)

    # -- locating ----------------------------------------------------------------------------
    def where(self, name: str) -> str:
        """The key path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> Exception:
        """The error to raise for ``name`` of this table."""
        return self._error(self.file, self.where(name), message)

    def has(self, name: str) -> bool:
        """Whether the table sets ``name`` (asking does not make the key known)."""
        return name in self.data

    def allow(self, *names: str) -> None:
        """Count ``names`` as known before they are read (for an early :meth:`done`)."""
        self._known.update(names)

    def done(self) -> None:
        """Refuse the first key that no getter asked for, naming the allowed ones."""
        unknown = [k for k in self.data if k not in self._known]
        if unknown:
            raise self.error(unknown[0], "unknown key; allowed here: "
                             + ", ".join(sorted(self._known)))

    # -- typed getters -----------------------------------------------------------------------
    def _typed(self, name: str, kind: type[T], required: bool, hint: str) -> T | None:
        """The value of ``name`` checked to be a ``kind`` (an integer is a float); ``None``
        when absent."""
        self._known.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, _hinted("is missing", hint))
            return None
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            word = _KIND_WORDS.get(kind, kind.__name__)
            raise self.error(name, _hinted(f"must be {word}, not {_describe(value)}", hint))
        return value

    @overload
    def get(self, name: str, kind: type[T], default: None = None, *, required: bool = False,
            hint: str = "") -> T | None: ...

    @overload
    def get(self, name: str, kind: type[T], default: T, *, required: bool = False,
            hint: str = "") -> T: ...

    def get(self, name: str, kind: type[T], default: T | None = None, *,
            required: bool = False, hint: str = "") -> T | None:
        """``name`` as a ``kind`` (``str``, ``int``, ``float``, ``bool``, ``list``, ``dict``),
        or ``default`` when absent (``required``: absent is an error, ``hint`` says the fix).
        A float must be finite."""
        value = self._typed(name, kind, required, hint)
        if value is None:
            return default
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(name, f"must be a finite number, not {value!r}")
        return value

    def req(self, name: str, kind: type[T], hint: str = "") -> T:
        """A required ``name``; ``hint`` says what to write when it is missing or wrong."""
        value = self.get(name, kind, required=True, hint=hint)
        assert value is not None
        return value

    def choice(self, name: str, options: Iterable[str], default: str | None = None, *,
               hint: str = "") -> str:
        """One of ``options``; required when there is no ``default``."""
        allowed = tuple(options)
        value = self.get(name, str, default, required=default is None,
                         hint=hint or " | ".join(allowed))
        assert value is not None
        if value not in allowed:
            raise self.error(name, f"{value!r} is not one of: {', '.join(allowed)}")
        return value

    def check(self, name: str, value: T, ok: Callable[[T], bool], message: str) -> T:
        """``value`` (read from ``name``) when ``ok(value)``; else an error saying ``message``."""
        if not ok(value):
            raise self.error(name, message)
        return value

    def integer(self, name: str, default: int, low: int, high: int, unit: str = "") -> int:
        """An integer in ``low..high`` (``unit`` names it in the error)."""
        value = self.get(name, int, default)
        if not low <= value <= high:
            raise self.error(name, f"{value} is out of range: {low}..{high}"
                             + (f" {unit}" if unit else ""))
        return value

    def number(self, name: str, default: float, *, above: float, unit: str = "") -> float:
        """A finite number (an integer is accepted) greater than ``above``."""
        value = self._typed(name, float, False, "")
        if value is None:
            return default
        if not math.isfinite(value) or value <= above:
            raise self.error(name, f"must be a number above {above:g}"
                             + (f" ({unit})" if unit else "") + f", not {self.data[name]!r}")
        return value

    def texts(self, name: str) -> list[str] | None:
        """A string or an array of strings (``None`` when absent)."""
        self._known.add(name)
        value = self.data.get(name)
        if value is None:
            return None
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
            raise self.error(name, f"must be a string or an array of strings, not "
                                   f"{_describe(value)}")
        return items

    # -- nested tables -----------------------------------------------------------------------
    def table(self, name: str, *, required: bool = False, hint: str = "") -> Table:
        """The ``[name]`` table (empty when absent and not ``required``)."""
        self._known.add(name)
        if required and name not in self.data:
            raise self.error(name, _hinted("is missing", hint))
        return Table(self.file, self.where(name), self.data.get(name, {}), self._error)

    def tables(self, name: str) -> list[Table]:
        """An optional array of tables (``[[name]]``), each located as ``name[i]``."""
        self._known.add(name)
        value = self.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of tables ([[{name}]]), not "
                                   f"{_describe(value)}")
        return [Table(self.file, f"{self.where(name)}[{i}]", item, self._error)
                for i, item in enumerate(value)]


def read_toml(file: Path, error: ErrorFactory = ConfigError) -> dict[str, Any]:
    """Parse ``file``: unreadable, not UTF-8 or not TOML is one located ``error``."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise error(file, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(file, "", f"is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(file, "", f"is not valid TOML: {exc}") from None
