"""Counter consumption: example tests per anomaly, and hypothesis properties over random series."""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway._consumption import (
    ConsumptionTracker,
    CounterSpec,
    periods_for_interval,
)
from protocol import Period, Quality, Reading, parse_time, period_end, period_start

MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


Samples = list[tuple[int, float]]


def run(tracker: ConsumptionTracker, samples: Samples, code: str = "p") -> list[Reading]:
    out: list[Reading] = []
    for ts, value in samples:
        out.extend(tracker.feed(code, ts, value))
    return out


def by(readings: list[Reading], period: Period) -> dict[int, Reading]:
    return {r.ts: r for r in readings if r.period is period}


def t(text: str) -> int:
    return parse_time(text)


# -- periods ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("interval", "periods"),
    [
        (60, (Period.MIN15, Period.HOUR, Period.DAY, Period.MONTH)),
        (900, (Period.MIN15, Period.HOUR, Period.DAY, Period.MONTH)),
        (1800, (Period.HOUR, Period.DAY, Period.MONTH)),
        (3600, (Period.HOUR, Period.DAY, Period.MONTH)),
        (7, ()),
        (0, ()),
    ],
)
def test_periods_follow_the_poll_interval(interval: int, periods: tuple[Period, ...]) -> None:
    assert periods_for_interval(interval) == periods


def test_hourly_polls_yield_no_quarter_hours() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=3600)])
    start = t("2026-03-10T00:00:00")
    out = run(tr, [(start + i * HOUR, 10.0 * i) for i in range(25)])
    assert {r.period for r in out} == {Period.HOUR, Period.DAY}
    assert by(out, Period.DAY)[start].value == pytest.approx(240.0)


# -- the normal case -------------------------------------------------------------------------

def test_day_equals_sum_of_quarter_hours_and_hours() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=60)])
    start = t("2026-05-20T00:00:00")
    samples = [(start + i * MIN, 1000.0 + 0.37 * i + (i % 7) * 0.01) for i in range(1441)]
    out = run(tr, samples)
    q = by(out, Period.MIN15)
    h = by(out, Period.HOUR)
    d = by(out, Period.DAY)
    assert len(q) == 96 and len(h) == 24 and list(d) == [start]
    assert all(r.quality == Quality.GOOD for r in out)
    assert math.isclose(sum(r.value for r in q.values()), d[start].value, rel_tol=1e-12)
    assert math.isclose(sum(r.value for r in h.values()), d[start].value, rel_tol=1e-12)
    assert d[start].value == pytest.approx(samples[-1][1] - samples[0][1])


def test_month_and_year_boundaries_in_china_standard_time() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=3600)])
    start = t("2026-11-01T00:00:00+08:00")
    end = t("2027-01-01T00:00:00+08:00")
    samples = [(ts, (ts - start) / HOUR * 2.0) for ts in range(start, end + 1, HOUR)]
    out = run(tr, samples)
    months = by(out, Period.MONTH)
    nov, dec = t("2026-10-31T16:00:00Z"), t("2026-11-30T16:00:00Z")
    assert nov == start and dec == t("2026-12-01T00:00:00+08:00")
    assert sorted(months) == [nov, dec]
    assert months[nov].value == pytest.approx(30 * 24 * 2.0)
    assert months[dec].value == pytest.approx(31 * 24 * 2.0)
    days = by(out, Period.DAY)
    assert t("2026-12-31T00:00:00+08:00") in days
    assert max(days) == t("2026-12-30T16:00:00Z")      # Dec 31 CST is the last complete day
    assert sum(r.value for r in days.values()) == pytest.approx(samples[-1][1])


def test_first_partial_interval_is_skipped() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=60)])
    start = t("2026-05-20T10:07:00")
    out = run(tr, [(start + i * MIN, float(i)) for i in range(60)])
    q = by(out, Period.MIN15)
    assert sorted(q) == [t("2026-05-20T10:15:00"), t("2026-05-20T10:30:00"),
                         t("2026-05-20T10:45:00")]
    assert Period.HOUR not in {r.period for r in out}
    assert all(r.value == pytest.approx(15.0) for r in q.values())


# -- jitter and late samples -----------------------------------------------------------------

def test_sample_within_a_second_is_the_boundary_value() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b + 800, 0.0), (b + 15 * MIN - 900, 5.0), (b + 30 * MIN + 1000, 12.0)])
    q = by(out, Period.MIN15)
    assert q[b] == Reading("p", Period.MIN15, b, 5.0, Quality.GOOD)
    assert q[b + 15 * MIN] == Reading("p", Period.MIN15, b + 15 * MIN, 7.0, Quality.GOOD)


def test_late_sample_interpolates_the_boundary() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)])
    b = t("2026-05-20T10:00:00")
    # the sample for 10:15 comes 90 s late; 10:30 on time
    out = run(tr, [(b, 0.0), (b + 15 * MIN + 90_000, 11.0), (b + 30 * MIN, 20.0)])
    q = by(out, Period.MIN15)
    c_1015 = 11.0 * (15 * MIN) / (15 * MIN + 90_000)
    assert q[b].value == pytest.approx(c_1015)
    assert q[b].quality == Quality.ESTIMATED
    assert q[b + 15 * MIN].value == pytest.approx(20.0 - c_1015)
    assert q[b + 15 * MIN].quality == Quality.ESTIMATED
    assert q[b].value + q[b + 15 * MIN].value == pytest.approx(20.0)


def test_gap_of_a_day_is_filled_linearly_and_totals_stay_right() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)])
    d0 = t("2026-06-01T00:00:00")
    samples = [(d0 + i * 15 * MIN, float(i)) for i in range(40)]           # to 09:45 on day 1
    resume = d0 + 2 * DAY + 10 * HOUR                                       # day 3, 10:00
    samples += [(resume + i * 15 * MIN, 1000.0 + i) for i in range(57)]      # to day 4 00:00
    out = run(tr, samples)
    days = by(out, Period.DAY)
    assert sorted(days) == [d0, d0 + DAY, d0 + 2 * DAY]
    assert days[d0 + DAY].quality == Quality.ESTIMATED
    total = samples[-1][1] - samples[0][1]
    assert sum(r.value for r in days.values()) == pytest.approx(total)
    assert sum(r.value for r in out if r.period is Period.MIN15) == pytest.approx(total)
    gap_rate = (1000.0 - 39.0) / (resume - samples[39][0]) * 15 * MIN
    inside = by(out, Period.MIN15)[d0 + DAY + 5 * HOUR]
    assert inside.quality == Quality.ESTIMATED
    assert inside.value == pytest.approx(gap_rate)
    assert by(out, Period.MIN15)[resume].quality == Quality.GOOD


def test_gap_beyond_the_maximum_emits_nothing_and_starts_afresh() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)], max_gap_ms=10 * DAY)
    d0 = t("2026-06-01T00:00:00")
    out = run(tr, [(d0, 0.0), (d0 + 15 * MIN, 1.0)])
    assert len(out) == 1
    later = d0 + 11 * DAY
    out = run(tr, [(later, 500.0), (later + 15 * MIN, 501.0)])
    assert out == [Reading("p", Period.MIN15, later, 1.0, Quality.GOOD)]


# -- anomalies -------------------------------------------------------------------------------

def test_rollover_near_counter_max() -> None:
    spec = CounterSpec("p", max_rate=100.0, counter_max=1_000_000.0, interval_s=900)
    tr = ConsumptionTracker([spec])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 999_990.0), (b + 15 * MIN, 999_998.5), (b + 30 * MIN, 4.0),
                   (b + 45 * MIN, 9.0)])
    q = by(out, Period.MIN15)
    assert q[b].quality == Quality.GOOD
    assert q[b + 15 * MIN].value == pytest.approx(5.5)
    assert q[b + 15 * MIN].quality == Quality.ROLLOVER
    assert q[b + 30 * MIN] == Reading("p", Period.MIN15, b + 30 * MIN, 5.0, Quality.GOOD)


def test_signed_register_wraps_to_its_negative_limit() -> None:
    spec = CounterSpec("p", counter_max=2.0**31, interval_s=900)         # int32, scale 1
    tr = ConsumptionTracker([spec])
    b = t("2026-05-20T10:00:00")
    top = 2.0**31
    out = run(tr, [(b, top - 5), (b + 15 * MIN, -top + 3), (b + 30 * MIN, -top + 9)])
    q = by(out, Period.MIN15)
    assert q[b] == Reading("p", Period.MIN15, b, 8.0, Quality.ROLLOVER)
    assert q[b + 15 * MIN] == Reading("p", Period.MIN15, b + 15 * MIN, 6.0, Quality.GOOD)


def test_implausible_wrap_is_a_reset() -> None:
    # 20 units in 15 minutes is beyond max_rate 10/h: not a wrap
    spec = CounterSpec("p", max_rate=10.0, counter_max=1_000_000.0, interval_s=900)
    tr = ConsumptionTracker([spec])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 999_990.0), (b + 15 * MIN, 10.0)])
    assert out == [Reading("p", Period.MIN15, b, 0.0, Quality.COUNTER_RESET)]


def test_reset_counts_the_new_counter_when_plausible_and_rebases() -> None:
    spec = CounterSpec("p", max_rate=100.0, interval_s=900)
    tr = ConsumptionTracker([spec])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 5000.0), (b + 15 * MIN, 5010.0), (b + 30 * MIN, 3.0),
                   (b + 45 * MIN, 8.0), (b + 60 * MIN, 12.0)])
    q = by(out, Period.MIN15)
    assert q[b + 15 * MIN] == Reading("p", Period.MIN15, b + 15 * MIN, 3.0, Quality.COUNTER_RESET)
    assert q[b + 30 * MIN] == Reading("p", Period.MIN15, b + 30 * MIN, 5.0, Quality.GOOD)
    hour = by(out, Period.HOUR)[b]
    assert hour.value == pytest.approx(10 + 3 + 5 + 4)
    assert hour.quality == Quality.COUNTER_RESET


def test_reset_without_max_rate_counts_zero() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 5000.0), (b + 15 * MIN, 1234.0), (b + 30 * MIN, 1240.0)])
    q = by(out, Period.MIN15)
    assert q[b] == Reading("p", Period.MIN15, b, 0.0, Quality.COUNTER_RESET)
    assert q[b + 15 * MIN] == Reading("p", Period.MIN15, b + 15 * MIN, 6.0, Quality.GOOD)


def test_out_of_range_jump_counts_zero_and_rebases() -> None:
    spec = CounterSpec("p", max_rate=40.0, interval_s=900)       # at most 10 per quarter hour
    tr = ConsumptionTracker([spec])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 100.0), (b + 15 * MIN, 104.0), (b + 30 * MIN, 90_000.0),
                   (b + 45 * MIN, 90_006.0), (b + 60 * MIN, 90_010.0)])
    q = by(out, Period.MIN15)
    assert q[b + 15 * MIN] == Reading("p", Period.MIN15, b + 15 * MIN, 0.0, Quality.OUT_OF_RANGE)
    assert q[b + 30 * MIN] == Reading("p", Period.MIN15, b + 30 * MIN, 6.0, Quality.GOOD)
    hour = by(out, Period.HOUR)[b]
    assert hour.value == pytest.approx(4 + 6 + 4)
    assert hour.quality == Quality.OUT_OF_RANGE


def test_bad_samples_are_ignored() -> None:
    tr = ConsumptionTracker([CounterSpec("p", interval_s=900)])
    b = t("2026-05-20T10:00:00")
    out = run(tr, [(b, 0.0), (b + 10 * MIN, 1.0), (b + 5 * MIN, 7.0), (b + 10 * MIN, 7.0),
                   (b + 12 * MIN, math.nan), (b + 15 * MIN, 2.0)])
    assert out == [Reading("p", Period.MIN15, b, 2.0, Quality.GOOD)]
    with pytest.raises(KeyError):
        tr.feed("unknown", b, 1.0)


def test_state_is_json_and_restores() -> None:
    spec = CounterSpec("p", max_rate=100.0, counter_max=1000.0, interval_s=900)
    b = t("2026-05-20T10:00:00")
    samples = [(b + i * 15 * MIN, (990.0 + 3 * i) % 1000.0) for i in range(12)]
    whole = run(ConsumptionTracker([spec]), samples)
    first = ConsumptionTracker([spec])
    part = run(first, samples[:5])
    saved = json.loads(json.dumps(first.state()))
    second = ConsumptionTracker([spec, CounterSpec("other")], state=saved)
    part += run(second, samples[5:])
    assert part == whole
    assert any(r.quality == Quality.ROLLOVER for r in whole)


def test_state_of_unknown_points_and_new_periods() -> None:
    b = t("2026-05-20T10:00:00")
    old = ConsumptionTracker([CounterSpec("p", interval_s=3600)])
    run(old, [(b, 0.0)])
    # the interval went down to 15 minutes: quarter hours start at the last sample
    new = ConsumptionTracker([CounterSpec("p", interval_s=900)],
                             state={**old.state(), "gone": {"v": 1}})
    out = run(new, [(b + i * 15 * MIN, float(i)) for i in range(1, 5)])
    assert by(out, Period.HOUR)[b].value == pytest.approx(4.0)
    assert sorted(by(out, Period.MIN15)) == [b + i * 15 * MIN for i in range(4)]


# -- properties ------------------------------------------------------------------------------

GRID_STARTS = [t(x) for x in ("2026-01-01T00:00:00", "2026-02-27T00:00:00",
                               "2026-11-30T00:00:00", "2026-12-31T00:00:00",
                               "2026-06-15T00:00:00")]


@st.composite
def clean_series(draw: st.DrawFn) -> tuple[int, list[tuple[int, float]]]:
    """Samples from a CST midnight to a later one: jitter within 1 s, missed polls, no anomaly."""
    interval = draw(st.sampled_from([300, 900, 3600]))
    start = draw(st.sampled_from(GRID_STARTS))
    days = draw(st.integers(1, 2))
    n = days * 86400 // interval
    keep = draw(st.lists(st.booleans(), min_size=n - 1, max_size=n - 1))
    incs = draw(st.lists(st.floats(0, 50, allow_nan=False), min_size=n, max_size=n))
    jitter = draw(st.lists(st.integers(-1000, 1000), min_size=n + 1, max_size=n + 1))
    value = draw(st.floats(0, 1e6, allow_nan=False))
    samples = [(start + jitter[0], value)]
    for i in range(1, n + 1):
        value += incs[i - 1]
        if i == n or keep[i - 1]:
            samples.append((start + i * interval * 1000 + jitter[i], value))
    return interval, samples


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clean_series())
def test_clean_series_totals_agree(case: tuple[int, list[tuple[int, float]]]) -> None:
    interval, samples = case
    out = run(ConsumptionTracker([CounterSpec("p", interval_s=interval)]), samples)
    total = samples[-1][1] - samples[0][1]
    sums: dict[Period, float] = defaultdict(float)
    for r in out:
        assert r.value >= 0
        sums[r.period] += r.value
    for period in periods_for_interval(interval):
        if period is Period.MONTH:
            continue
        assert math.isclose(sums[period], total, rel_tol=1e-9, abs_tol=1e-6), period
    hours = by(out, Period.HOUR)
    for hour in hours.values():            # each hour is the sum of its own quarter hours
        quarters = [r.value for r in out if r.period is Period.MIN15
                    and hour.ts <= r.ts < hour.ts + HOUR]
        if quarters:
            assert math.isclose(sum(quarters), hour.value, rel_tol=1e-9, abs_tol=1e-6)


@st.composite
def wild_series(draw: st.DrawFn) -> tuple[CounterSpec, list[tuple[int, float]], int]:
    """Monotone counters with rollovers, resets, gaps, jitter and jumps; a save point."""
    interval = draw(st.sampled_from([60, 300, 900, 3600]))
    cmax = draw(st.sampled_from([None, 1000.0, 99_999.99]))
    rate = draw(st.sampled_from([None, 50.0, 400.0]))
    spec = CounterSpec("p", max_rate=rate, counter_max=cmax, interval_s=interval)
    ts = draw(st.sampled_from(GRID_STARTS)) + draw(st.integers(0, 96)) * 15 * MIN
    value = draw(st.floats(0, cmax or 1e6, allow_nan=False))
    samples = [(ts, value)]
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["ok"] * 8 + ["wrap", "reset", "jump", "gap", "late", "dup"]),
        st.floats(0, 30, allow_nan=False)), min_size=1, max_size=120))
    for kind, inc in steps:
        ts += interval * 1000
        if kind == "gap":
            ts += draw(st.integers(1, 3 * 86400 // interval)) * interval * 1000
        elif kind == "late":
            ts += draw(st.integers(1001, interval * 500))
        elif kind == "dup":
            ts -= interval * 1000
        value += inc
        if kind == "wrap" or (cmax is not None and value >= cmax):
            value = value % (cmax or 1000.0)
        elif kind == "reset":
            value = draw(st.floats(0, 10, allow_nan=False))
        elif kind == "jump":
            value += 1e5
        samples.append((ts + draw(st.integers(-1000, 1000)), value))
    cut = draw(st.integers(0, len(samples)))
    return spec, samples, cut


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wild_series())
def test_wild_series_invariants_and_restore(case: tuple[CounterSpec, Samples, int]) -> None:
    spec, samples, cut = case
    whole = run(ConsumptionTracker([spec]), samples)

    first = ConsumptionTracker([spec])
    resumed = run(first, samples[:cut])
    second = ConsumptionTracker([spec], state=json.loads(json.dumps(first.state())))
    resumed += run(second, samples[cut:])
    assert resumed == whole

    seen: set[tuple[Period, int]] = set()
    for r in whole:
        assert r.value >= 0
        assert r.period in periods_for_interval(spec.interval_s)
        assert period_start(r.period, r.ts) == r.ts           # on the CST grid
        assert (r.period, r.ts) not in seen                  # each interval at most once
        seen.add((r.period, r.ts))
        assert r.quality in {q.value for q in Quality}
        if spec.max_rate is not None:                       # never absurd
            hours = (period_end(r.period, r.ts) - r.ts) / HOUR
            assert r.value <= spec.max_rate * (hours * 1.01 + 1 / 30) + 1e-6


def test_built_from_configuration() -> None:
    from gateway._model import MeterConfig, PointConfig

    energy = PointConfig("kwh", counter=True, max_rate=5.0, counter_max=1e6)
    power = PointConfig("kw")
    meters = [MeterConfig("m1", "bus", "1", (energy, power), interval=900)]
    tr = ConsumptionTracker.for_meters(meters)
    assert tr.codes == ("kwh",)
    assert tr.periods("kwh") == periods_for_interval(900)
    same = ConsumptionTracker.for_points([energy], {"kwh": 900}, tr.state())
    assert same.state() == tr.state()
    with pytest.raises(KeyError, match="kwh"):
        ConsumptionTracker.for_points([energy], {"m1": 900})
