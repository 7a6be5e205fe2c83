"""The clock grid polls run on (DESIGN decision 5).

A meter with interval 60 s is polled at :00 of every minute, 900 s at :00/:15/:30/:45, 86400 s
at 00:00 China Standard Time. Each tick is computed from the wall clock, never by accumulating
sleeps, so a slow cycle or a clock step cannot make the schedule drift.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from protocol._time import CST_OFFSET_MS

from ._model import MeterConfig

__all__ = ["GRID_TOLERANCE_S", "due_meters", "next_tick", "next_tick_of", "on_grid"]

_CST_OFFSET_S = CST_OFFSET_MS // 1000
GRID_TOLERANCE_S = 1.0   # a sample within this of its grid time is stamped with the grid time


def next_tick(now: float, interval: int) -> int:
    """The first grid time strictly after ``now`` (Unix seconds) for ``interval``."""
    local = now + _CST_OFFSET_S
    return (math.floor(local / interval) + 1) * interval - _CST_OFFSET_S


def on_grid(t: int, interval: int) -> bool:
    return (t + _CST_OFFSET_S) % interval == 0


def next_tick_of(meters: Iterable[MeterConfig], now: float) -> int:
    """The first grid time after ``now`` at which any of ``meters`` is due."""
    return min(next_tick(now, m.interval) for m in meters)


def due_meters(meters: Iterable[MeterConfig], tick: int) -> list[MeterConfig]:
    return [m for m in meters if on_grid(tick, m.interval)]
