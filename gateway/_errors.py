"""The gateway's exception family.

::

    GatewayError
    ├── ConfigError        a configuration or profile file is wrong: file, key path, what to do
    └── ClockError         the clock cannot be trusted and the caller asked for certainty

Store and driver errors live beside their code (``gateway._store``, ``gateway.drivers``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ClockError", "ConfigError", "GatewayError"]


class GatewayError(Exception):
    """Base of the gateway's errors."""


class ConfigError(GatewayError):
    """A configuration problem, located: ``file``, ``key`` (e.g. ``meter[2].point[0].type``)."""

    def __init__(self, file: Path | str, key: str, message: str) -> None:
        self.file = str(file)
        self.key = key
        self.message = message
        where = f"{self.file}: {key}: " if key else f"{self.file}: "
        super().__init__(where + message)


class ClockError(GatewayError):
    """The system clock is not synchronised."""
