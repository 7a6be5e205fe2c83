"""China Standard Time and the statistical clock grid.

Statistical periods (15 minutes, hour, day, month) are aligned to the wall clock in China
Standard Time (UTC+8, no daylight saving since 1991). Times inside Kemon are integer
milliseconds since the Unix epoch; these helpers convert and align them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "CST",
    "CST_OFFSET_MS",
    "MS_PER_DAY",
    "MS_PER_HOUR",
    "MS_PER_MINUTE",
    "from_ms",
    "month_start",
    "next_month_start",
    "parse_time",
    "to_ms",
    "to_rfc3339",
]

CST = timezone(timedelta(hours=8), "CST")
MS_PER_MINUTE = 60_000
MS_PER_HOUR = 3_600_000
MS_PER_DAY = 86_400_000
CST_OFFSET_MS = 8 * MS_PER_HOUR


def to_ms(dt: datetime) -> int:
    """Milliseconds since the epoch; a naive datetime is taken as China Standard Time."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=CST)
    return round(dt.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """The instant ``ms`` as an aware datetime in China Standard Time."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).astimezone(CST)


def to_rfc3339(ms: int) -> str:
    """RFC 3339 in China Standard Time: seconds, and milliseconds only when there are any."""
    dt = from_ms(ms)
    if ms % 1000:
        return dt.isoformat(timespec="milliseconds")
    return dt.isoformat(timespec="seconds")


def parse_time(text: str) -> int:
    """Parse RFC 3339 (or a bare date); a time without offset means China Standard Time.

    Raises ``ValueError`` with a message naming the text when it is not a time.
    """
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time (e.g. 2026-11-27T08:00:00+08:00)"
        ) from None
    return to_ms(dt)


def month_start(ms: int) -> int:
    """Start (00:00 CST on the 1st) of the month containing ``ms``."""
    dt = from_ms(ms)
    return to_ms(dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0))


def next_month_start(ms: int) -> int:
    """Start of the month after the one containing ``ms``."""
    dt = from_ms(ms).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    dt = dt.replace(year=dt.year + 1, month=1) if dt.month == 12 else dt.replace(month=dt.month + 1)
    return to_ms(dt)
