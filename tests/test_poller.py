"""The bus poller's bookkeeping, driven through the Driver seam with a scripted driver and a
hand-moved clock: retries, offline after repeated failures, back-off, recovery."""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import datetime

import pytest

from gateway._model import BusConfig, MeterConfig, PointConfig
from gateway._poller import MAX_BACKOFF_S, BusPoller
from gateway._schedule import due_meters, next_tick, next_tick_of, on_grid
from gateway.drivers._base import (
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)
from protocol import CST, to_ms

BUS = BusConfig(name="b", kind="modbus-rtu", port="/dev/null", timeout=0.1, retries=1)
POINT = PointConfig(code="m.e", register=0)


def meter(name: str = "m", interval: int = 60, offline_after: int = 3) -> MeterConfig:
    return MeterConfig(name=name, bus="b", address="1", points=(POINT,), interval=interval,
                       offline_after=offline_after)


class ScriptedDriver:
    """Answers each read with the next scripted outcome (an exception or a value)."""

    def __init__(self, *outcomes: object) -> None:
        self.bus = BUS
        self.outcomes = deque(outcomes)
        self.reads = 0
        self.closes = 0

    async def connect(self) -> None:
        pass

    async def read_meter(self, meter: MeterConfig) -> ReadResult:
        self.reads += 1
        outcome = self.outcomes.popleft() if self.outcomes else 1.0
        if isinstance(outcome, Exception):
            raise outcome
        return ReadResult(values={POINT.code: float(outcome)}, requests=1)  # type: ignore[arg-type]

    async def close(self) -> None:
        self.closes += 1


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def poll(poller: BusPoller, m: MeterConfig) -> object:
    return asyncio.run(poller.poll([m], 0))[0]


def test_a_retry_recovers_a_lost_answer() -> None:
    driver = ScriptedDriver(MeterTimeout("m", "x"), 5.0)
    poller = BusPoller(BUS, driver)
    result = poll(poller, meter())
    assert result.values == {"m.e": 5.0}
    st = poller.stats["m"]
    assert (st.requests, st.errors, st.timeouts, st.offline) == (2, 1, 1, False)
    assert st.last_good is not None and st.consecutive_failures == 0


def test_an_exception_reply_is_not_retried() -> None:
    driver = ScriptedDriver(MeterExceptionReply("m", "illegal address", 2))
    poller = BusPoller(BUS, driver)
    result = poll(poller, meter())
    assert isinstance(result.error, MeterExceptionReply) and driver.reads == 1


def test_offline_after_repeated_failures_then_backed_off_and_back() -> None:
    mono = Clock()
    failures = [MeterFrameError("m", "bad crc")] * 40
    driver = ScriptedDriver(*failures)
    poller = BusPoller(BUS, driver, monotonic=mono)
    m = meter(interval=60, offline_after=3)
    for _ in range(3):
        mono.t += 60
        poll(poller, m)
    mono.t += 30                                      # half an interval later
    st = poller.stats["m"]
    assert st.offline and driver.reads == 6          # 3 polls x (1 + 1 retry)
    # while backing off, polls are skipped without touching the bus
    skipped = poll(poller, m)
    assert skipped.skipped and driver.reads == 6
    # after the back-off: one attempt, no retry; the back-off doubles up to the maximum
    backoffs = []
    for _ in range(8):
        mono.t = st.next_attempt + 0.6
        poll(poller, m)
        backoffs.append(st.backoff_s)
    assert backoffs == sorted(backoffs) and backoffs[-1] == MAX_BACKOFF_S
    assert driver.reads == 6 + 8
    # the meter answers again: online at once
    driver.outcomes.clear()
    mono.t = st.next_attempt + 0.6
    assert poll(poller, m).values == {"m.e": 1.0}
    assert not st.offline and st.backoff_s == 0


def test_a_hanging_driver_is_cut_off_by_the_deadline() -> None:
    class Hanging(ScriptedDriver):
        async def read_meter(self, meter: MeterConfig) -> ReadResult:
            await asyncio.sleep(3600)
            raise AssertionError

    bus = BusConfig(name="b", kind="modbus-rtu", port="/dev/null", timeout=0.01, retries=0)
    driver = Hanging()
    poller = BusPoller(bus, driver)
    poller._deadline = lambda m: 0.05  # type: ignore[method-assign]
    result = poll(poller, meter())
    assert isinstance(result.error, MeterTimeout)
    assert driver.closes == 1        # the link is reset after a cut-off transaction


@pytest.mark.parametrize(("now", "interval", "expected"), [
    (datetime(2026, 11, 27, 8, 7, 3), 60, datetime(2026, 11, 27, 8, 8)),
    (datetime(2026, 11, 27, 8, 7, 3), 900, datetime(2026, 11, 27, 8, 15)),
    (datetime(2026, 11, 27, 8, 15, 0), 900, datetime(2026, 11, 27, 8, 30)),
    (datetime(2026, 11, 27, 8, 7, 3), 3600, datetime(2026, 11, 27, 9, 0)),
    (datetime(2026, 11, 27, 8, 7, 3), 86400, datetime(2026, 11, 28, 0, 0)),   # CST midnight
    (datetime(2026, 11, 27, 23, 59, 59, 999000), 5, datetime(2026, 11, 28, 0, 0)),
])
def test_ticks_are_on_the_cst_grid(now: datetime, interval: int, expected: datetime) -> None:
    t = next_tick(to_ms(now) / 1000, interval)
    assert t * 1000 == to_ms(expected.replace(tzinfo=CST))
    assert on_grid(t, interval)


def test_due_meters_share_ticks() -> None:
    fast, slow = meter("fast", 60), meter("slow", 900)
    quarter = to_ms(datetime(2026, 11, 27, 8, 15, tzinfo=CST)) // 1000
    assert due_meters([fast, slow], quarter) == [fast, slow]
    assert due_meters([fast, slow], quarter + 60) == [fast]
    assert next_tick_of([fast, slow], quarter + 1) == quarter + 60
