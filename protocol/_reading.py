"""The reading model both ends share: a point's value for a period at a time, with a quality."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, NamedTuple

from ._time import (
    CST_OFFSET_MS,
    MS_PER_DAY,
    MS_PER_HOUR,
    MS_PER_MINUTE,
    month_start,
    next_month_start,
    to_rfc3339,
)

__all__ = ["Period", "Quality", "Reading", "period_end", "period_start"]


class Period(StrEnum):
    """What a reading's value covers. Intervals are named by their start (``ts``)."""

    INSTANT = "instant"
    MIN15 = "15min"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class Quality(StrEnum):
    """Why a value is or is not good. Stored as text; more words may be added."""

    GOOD = "good"
    COMM_ERROR = "comm_error"          # the meter did not answer or answered garbage
    CLOCK_UNSYNCED = "clock_unsynced"  # the gateway clock was not synchronised
    LATE = "late"                      # sampled more than 1 s away from its grid time
    COUNTER_RESET = "counter_reset"    # counter went back: meter replaced or reset
    ROLLOVER = "rollover"              # counter wrapped at its register maximum
    OUT_OF_RANGE = "out_of_range"      # implausible jump beyond the point's limit
    ESTIMATED = "estimated"            # interpolated across a gap in the samples
    MANUAL = "manual"                  # entered by hand


_FIXED_MS = {
    Period.MIN15: 15 * MS_PER_MINUTE,
    Period.HOUR: MS_PER_HOUR,
    Period.DAY: MS_PER_DAY,
}


def period_start(period: Period, ms: int) -> int:
    """Start of the ``period`` interval (China Standard Time grid) that contains ``ms``."""
    if period is Period.INSTANT:
        return ms
    if period is Period.MONTH:
        return month_start(ms)
    size = _FIXED_MS[period]
    local = ms + CST_OFFSET_MS
    return local - local % size - CST_OFFSET_MS


def period_end(period: Period, start: int) -> int:
    """End (exclusive) of the interval that starts at ``start``."""
    if period is Period.INSTANT:
        return start
    if period is Period.MONTH:
        return next_month_start(start)
    return start + _FIXED_MS[period]


class Reading(NamedTuple):
    """One value: ``ts`` is milliseconds since the epoch (an interval's start for intervals).

    A named tuple rather than a frozen dataclass: the store builds millions of these when it
    seals a backlog, and a tuple is built three times faster (bench/bench_drain.py)."""

    point: str
    period: Period
    ts: int
    value: float
    quality: str = Quality.GOOD

    def to_json_dict(self) -> dict[str, Any]:
        """The CONTRACT.md form (without unit/gateway, which the caller may add)."""
        return {
            "point": self.point,
            "period": str(self.period),
            "ts": to_rfc3339(self.ts),
            "value": self.value,
            "quality": str(self.quality),
        }
