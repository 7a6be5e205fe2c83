"""A point's ``plausible = [low, high]``: the gateway stores a value outside it as read, flagged
``out_of_range``, and leaves it out of the counter's consumption; the self-test fails it."""

from __future__ import annotations

from gateway._consumption import ConsumptionTracker
from gateway._model import MeterConfig, PointConfig
from gateway._poller import MeterPoll
from gateway._runner import polls_to_readings
from gateway._selftest_judge import implausible
from protocol import Period, Quality

VOLTS = PointConfig(code="m.u1", unit="V", plausible=(180.0, 260.0))
KWH = PointConfig(code="m.kwh", unit="kWh", counter=True, plausible=(0.0, 1e6))
METER = MeterConfig(name="m", bus="b", address="1", points=(VOLTS, KWH), interval=60)
TICK = 1_795_000_000 - 1_795_000_000 % 900          # on the quarter-hour grid


def poll(minute: int, volts: float, kwh: float) -> MeterPoll:
    tick = TICK + 60 * minute
    return MeterPoll(METER, tick, float(tick), values={"m.u1": volts, "m.kwh": kwh})


def test_outside_the_bounds_is_kept_and_flagged() -> None:
    tracker = ConsumptionTracker.for_meters([METER])
    readings = polls_to_readings([poll(0, 2301.0, 100.0)], tracker, synchronised=True)
    [u1] = [r for r in readings if r.point == "m.u1"]
    assert (u1.value, u1.quality) == (2301.0, Quality.OUT_OF_RANGE)   # a wrong scale, kept
    readings = polls_to_readings([poll(1, 231.0, 100.0)], tracker, synchronised=True)
    assert {r.point: r.quality for r in readings} == {"m.u1": Quality.GOOD,
                                                      "m.kwh": Quality.GOOD}


def test_an_implausible_counter_sample_is_not_consumption() -> None:
    tracker = ConsumptionTracker.for_meters([METER])
    out = []
    for minute in range(31):
        kwh = 100.0 + minute * 0.1 if minute != 10 else 9e9        # one garbled sample
        out += polls_to_readings([poll(minute, 230.0, kwh)], tracker, synchronised=True)
    flagged = [r for r in out if r.quality is Quality.OUT_OF_RANGE]
    assert [(r.point, r.period, r.value) for r in flagged] == [("m.kwh", Period.INSTANT, 9e9)]
    quarters = [r for r in out if r.period is Period.MIN15 and r.point == "m.kwh"]
    assert [round(r.value, 6) for r in quarters] == [1.5, 1.5]       # 0.1 kWh a minute
    assert all(r.quality is not Quality.OUT_OF_RANGE for r in quarters)


def test_an_unsynchronised_clock_still_says_so() -> None:
    tracker = ConsumptionTracker.for_meters([METER])
    [u1, _] = polls_to_readings([poll(0, 5.0, 100.0)], tracker, synchronised=False)
    assert u1.quality is Quality.CLOCK_UNSYNCED


def test_the_selftest_uses_the_point_s_bounds_before_the_unit_s() -> None:
    assert implausible(VOLTS, 231.0) is None
    why = implausible(VOLTS, 2310.0)
    assert why is not None and "outside the plausible 180 to 260 V" in why
    assert implausible(PointConfig(code="x", unit="V"), 2310.0) is None   # the unit's range
