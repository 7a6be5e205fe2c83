"""China Standard Time helpers and the statistical period grid (protocol/_time.py, _reading.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from protocol import (
    CST,
    Period,
    from_ms,
    month_start,
    next_month_start,
    parse_time,
    period_end,
    period_start,
    to_ms,
    to_rfc3339,
)


def cst(year: int, month: int, day: int, hour: int = 0, minute: int = 0,
        second: int = 0) -> int:
    """Milliseconds of a wall-clock time in China Standard Time."""
    return to_ms(datetime(year, month, day, hour, minute, second, tzinfo=CST))


def test_cst_is_utc_plus_eight() -> None:
    assert CST.utcoffset(None) == timedelta(hours=8)
    assert cst(1970, 1, 1, 8, 0) == 0


def test_naive_datetime_means_cst() -> None:
    assert to_ms(datetime(2026, 11, 27, 8, 0)) == cst(2026, 11, 27, 8, 0)
    assert to_ms(datetime(2026, 11, 27, 0, 0, tzinfo=UTC)) == cst(2026, 11, 27, 8, 0)


def test_from_ms_is_aware_cst() -> None:
    dt = from_ms(cst(2026, 11, 27, 8, 15, 30))
    assert dt.utcoffset() == timedelta(hours=8)
    assert (dt.hour, dt.minute, dt.second) == (8, 15, 30)


@pytest.mark.parametrize(
    ("period", "at", "start", "end"),
    [
        (Period.MIN15, (2026, 11, 27, 8, 14, 59), (2026, 11, 27, 8, 0), (2026, 11, 27, 8, 15)),
        (Period.MIN15, (2026, 11, 27, 8, 15, 0), (2026, 11, 27, 8, 15), (2026, 11, 27, 8, 30)),
        (Period.MIN15, (2026, 11, 27, 23, 59, 59), (2026, 11, 27, 23, 45),
         (2026, 11, 28, 0, 0)),
        (Period.HOUR, (2026, 11, 27, 8, 59, 59), (2026, 11, 27, 8, 0), (2026, 11, 27, 9, 0)),
        # a CST day starts at 00:00 CST = 16:00 UTC the day before, not at UTC midnight
        (Period.DAY, (2026, 11, 27, 0, 0, 0), (2026, 11, 27, 0, 0), (2026, 11, 28, 0, 0)),
        (Period.DAY, (2026, 11, 27, 7, 59, 59), (2026, 11, 27, 0, 0), (2026, 11, 28, 0, 0)),
        (Period.DAY, (2026, 11, 27, 8, 0, 0), (2026, 11, 27, 0, 0), (2026, 11, 28, 0, 0)),
        (Period.DAY, (2026, 12, 31, 23, 59, 59), (2026, 12, 31, 0, 0), (2027, 1, 1, 0, 0)),
        (Period.MONTH, (2026, 11, 30, 23, 59, 59), (2026, 11, 1, 0, 0), (2026, 12, 1, 0, 0)),
        (Period.MONTH, (2026, 12, 1, 0, 0, 0), (2026, 12, 1, 0, 0), (2027, 1, 1, 0, 0)),
        (Period.MONTH, (2028, 2, 29, 12, 0, 0), (2028, 2, 1, 0, 0), (2028, 3, 1, 0, 0)),
        (Period.MONTH, (2027, 2, 28, 12, 0, 0), (2027, 2, 1, 0, 0), (2027, 3, 1, 0, 0)),
    ],
)
def test_period_grid(period: Period, at: tuple[int, ...], start: tuple[int, ...],
                     end: tuple[int, ...]) -> None:
    got = period_start(period, cst(*at))
    assert got == cst(*start)
    assert period_end(period, got) == cst(*end)


def test_month_start_at_utc_month_boundary() -> None:
    # 2026-12-01 03:00 CST is still 2026-11-30 in UTC: the CST month is December.
    at = cst(2026, 12, 1, 3, 0)
    assert from_ms(at).astimezone(UTC).month == 11
    assert month_start(at) == cst(2026, 12, 1, 0, 0)
    assert next_month_start(at) == cst(2027, 1, 1, 0, 0)


def test_year_end_month() -> None:
    assert next_month_start(cst(2026, 12, 31, 23, 59, 59)) == cst(2027, 1, 1)


def test_start_on_the_grid_is_a_fixed_point() -> None:
    for period in (Period.MIN15, Period.HOUR, Period.DAY, Period.MONTH):
        start = period_start(period, cst(2026, 11, 27, 13, 37, 12))
        assert period_start(period, start) == start
        assert period_start(period, period_end(period, start) - 1) == start


def test_instant_period_is_the_time_itself() -> None:
    at = cst(2026, 11, 27, 8, 7, 3) + 123
    assert period_start(Period.INSTANT, at) == at
    assert period_end(Period.INSTANT, at) == at


def test_grid_before_the_epoch() -> None:
    at = cst(1969, 12, 31, 23, 59, 59)  # negative milliseconds
    assert at < 0
    assert period_start(Period.MIN15, at) == cst(1969, 12, 31, 23, 45)
    assert period_start(Period.DAY, at) == cst(1969, 12, 31, 0, 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-27T08:00:00+08:00", (2026, 11, 27, 8, 0)),
        ("2026-11-27T00:00:00Z", (2026, 11, 27, 8, 0)),
        ("2026-11-27T00:00:00z", (2026, 11, 27, 8, 0)),
        ("2026-11-27T00:00:00+00:00", (2026, 11, 27, 8, 0)),
        ("2026-11-27T08:00:00", (2026, 11, 27, 8, 0)),       # no offset: CST
        ("2026-11-27", (2026, 11, 27, 0, 0)),                # bare date: CST midnight
        ("  2026-11-27T08:00:00+08:00 ", (2026, 11, 27, 8, 0)),
        ("2026-11-27T09:30:00+09:30", (2026, 11, 27, 8, 0)),
    ],
)
def test_parse_time(text: str, expected: tuple[int, ...]) -> None:
    assert parse_time(text) == cst(*expected)


def test_parse_time_keeps_milliseconds() -> None:
    assert parse_time("2026-11-27T08:00:00.250+08:00") == cst(2026, 11, 27, 8, 0) + 250


@pytest.mark.parametrize("text", ["", "yesterday", "2026-13-01T00:00:00", "2026-11-27T25:00",
                                  "27/11/2026", "2026-11-27T08:00:00+8"])
def test_parse_time_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not an RFC 3339 time \(e\.g\. 2026-11-27T08"):
        parse_time(text)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (cst(2026, 11, 27, 8, 0), "2026-11-27T08:00:00+08:00"),
        (cst(2026, 11, 27, 8, 0) + 5, "2026-11-27T08:00:00.005+08:00"),
        (cst(2026, 11, 27, 8, 0) + 250, "2026-11-27T08:00:00.250+08:00"),
        (0, "1970-01-01T08:00:00+08:00"),
    ],
)
def test_to_rfc3339(ms: int, text: str) -> None:
    assert to_rfc3339(ms) == text
    assert parse_time(text) == ms


def test_to_rfc3339_is_always_cst() -> None:
    other = timezone(timedelta(hours=-5))
    ms = to_ms(datetime(2026, 11, 26, 19, 0, tzinfo=other))
    assert to_rfc3339(ms) == "2026-11-27T08:00:00+08:00"
