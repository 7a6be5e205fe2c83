"""Energy-counter semantics: cumulative counter samples become interval consumption.

Pure arithmetic, no I/O. A counter point (``PointConfig.counter``) is sampled on the clock grid;
:class:`ConsumptionTracker` turns its samples into ``15min``/``hour``/``day``/``month`` readings
whose ``ts`` is the interval's start on the China Standard Time grid
(``protocol.period_start``/``period_end``)::

    value([B0, B1)) = C(B1) - C(B0)

where ``C`` is the counter at a grid boundary. Every period is computed from its own boundary
values, so when all samples are good a day equals the sum of its 96 quarter-hours exactly (up to
float rounding) and a month equals the sum of its days.

How ``C(B)`` is obtained, and what quality the interval gets
------------------------------------------------------------
The tracker keeps a *continuous* counter ``C = raw + offset``: ``offset`` is 0 until an anomaly
and only changes at one, so ordinary differences are plain ``raw1 - raw0``. Each step between two
consecutive samples ``(t0, r0) -> (t1, r1)`` contributes a delta ``d >= 0`` to ``C``:

===================  ===========================================  ==============================
step                  delta ``d`` added to ``C``                    quality word (protocol.Quality)
===================  ===========================================  ==============================
``r1 >= r0``, fits   ``r1 - r0``                                   ``good``
``r1 - r0 >`` limit  ``0`` (the jump is not counted; re-based on     ``out_of_range``
                     ``r1``)
``r1 < r0`` wrap     ``counter_max - r0 + r1`` when ``r0`` is in   ``rollover``
                     the top 10 % of the range, ``r1`` in the
                     bottom 10 % and the wrapped delta fits (a
                     signed register wraps to ``-counter_max``:
                     ``2 * counter_max - r0 + r1``)
``r1 < r0`` other    ``r1`` when ``max_rate`` is set and ``r1``    ``counter_reset``
                     fits (a new counter that started at zero),
                     else ``0``; re-based on ``r1``
===================  ===========================================  ==============================

"fits" means ``<= max_rate * max(hours elapsed, 1 minute)``; without ``max_rate`` there is no
forward limit, a wrap only needs the 10 % windows, and a reset counts ``0`` (nothing tells a new
meter's first reading from an old meter's, so the only never-absurd choice is zero). An
``out_of_range`` jump counts zero rather than the measured delta because a delta beyond what the
point can physically consume is a decode error, a glitch or a swapped meter: putting it into
day/month totals would make them absurd, while zero plus the flag tells the platform exactly which
interval needs a manual correction.

``C(B)`` at a boundary ``B``:

* a sample within ``tolerance_ms`` (default 1 s) of ``B`` — the normal case, polls run on the
  grid — *is* the boundary value;
* otherwise ``C(B)`` is linearly interpolated between the samples on either side of ``B`` and the
  interval is ``estimated``. A gap (gateway off for a day) is the same case repeated: every
  interval inside it gets its linear share, so day and month totals stay right.

An interval's quality is the most serious word among the steps that overlap it, in the order
``out_of_range`` > ``counter_reset`` > ``rollover`` > ``estimated`` > ``good``. Values are never
negative: ``C`` never decreases and interpolation is monotone.

Gaps longer than ``max_gap_ms`` (default 40 days) emit nothing: a 40-day gap still spans at most
two month boundaries, so spreading it linearly keeps monthly figures meaningful; beyond that the
split between months would be pure invention, and one poll would emit thousands of rows per
point. After such a gap the tracker starts afresh (the interval around the new sample is partial
and skipped, exactly as at first start).

Which periods a point gets: those whose boundaries its poll interval can hit, i.e. the period's
length (900, 3600, 86400 s; a month is made of days) is a multiple of ``interval_s``.

Samples not later than the previous one (clock stepped back, duplicate) and non-finite values are
ignored with a log line. The first sample of a point starts the intervals: an interval is only
emitted when its start value is known (the first partial interval is skipped).

``state()`` is JSON-able and :meth:`ConsumptionTracker.restore` continues exactly where it left:
the store persists it in the same transaction as the readings, so after a crash no interval is
emitted twice and none is lost.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol import Period, Quality, Reading, period_end, period_start

__all__ = [
    "DEFAULT_MAX_GAP_MS",
    "DEFAULT_TOLERANCE_MS",
    "INTERVAL_PERIODS",
    "ConsumptionTracker",
    "CounterSpec",
    "periods_for_interval",
]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_MS = 1_000
"""A sample this close to a boundary is the boundary value (DESIGN.md: polls on the grid)."""
DEFAULT_MAX_GAP_MS = 40 * 86_400_000
"""Longest gap that is filled by interpolation (see the module docstring)."""

INTERVAL_PERIODS = (Period.MIN15, Period.HOUR, Period.DAY, Period.MONTH)
_PERIOD_SECONDS = {Period.MIN15: 900, Period.HOUR: 3600, Period.DAY: 86400, Period.MONTH: 86400}
_MIN_RATE_WINDOW_H = 1 / 60          # the rate limit allows at least one minute's consumption
_WRAP_WINDOW = 0.10                  # rollover: previous in the top, current in the bottom 10 %
_STATE_VERSION = 1

# Most serious first; the interval carries the first one present.
_SEVERITY = (Quality.OUT_OF_RANGE, Quality.COUNTER_RESET, Quality.ROLLOVER, Quality.ESTIMATED)


def periods_for_interval(interval_s: int) -> tuple[Period, ...]:
    """The interval periods whose boundaries a poll every ``interval_s`` seconds can hit."""
    if interval_s <= 0:
        return ()
    return tuple(p for p in INTERVAL_PERIODS if _PERIOD_SECONDS[p] % interval_s == 0)


@dataclass(frozen=True, slots=True)
class CounterSpec:
    """What the tracker needs to know about one counter point.

    ``max_rate``: largest credible consumption per hour (unit of the point); ``None``: no check.
    ``counter_max``: the value at which the counter wraps to zero, after scale (e.g.
    ``2**32 * scale`` for a uint32 register, ``1_000_000`` for a DL/T 645 XXXXXX.XX counter,
    whose largest value is 999999.99); ``None``: the counter never wraps.
    """

    code: str
    max_rate: float | None = None
    counter_max: float | None = None
    interval_s: int = 60

    @classmethod
    def from_point(cls, point: Any, interval_s: int) -> CounterSpec:
        """From a ``gateway._model.PointConfig`` (duck-typed) and its meter's poll interval."""
        return cls(point.code, point.max_rate, point.counter_max, interval_s)


class _Open:
    """The open interval of one period: its start, ``C`` there (None: unknown), flags so far."""

    __slots__ = ("cum", "estimated", "flags", "start")

    def __init__(self, start: int, cum: float | None, estimated: bool, flags: set[str]) -> None:
        self.start = start
        self.cum = cum
        self.estimated = estimated
        self.flags = flags

    def dump(self) -> list[Any]:
        return [self.start, self.cum, self.estimated, sorted(self.flags)]

    @classmethod
    def load(cls, data: list[Any]) -> _Open:
        start, cum, estimated, flags = data
        return cls(int(start), None if cum is None else float(cum), bool(estimated), set(flags))


class _PointTracker:
    __slots__ = ("offset", "open", "periods", "prev_raw", "prev_ts", "spec")

    def __init__(self, spec: CounterSpec) -> None:
        self.spec = spec
        self.periods = periods_for_interval(spec.interval_s)
        self.prev_ts: int | None = None
        self.prev_raw = 0.0
        self.offset = 0.0
        self.open: dict[Period, _Open] = {}

    # -- state -------------------------------------------------------------------------------
    def dump(self) -> dict[str, Any]:
        return {
            "v": _STATE_VERSION,
            "prev_ts": self.prev_ts,
            "prev_raw": self.prev_raw,
            "offset": self.offset,
            "open": {str(p): o.dump() for p, o in self.open.items()},
        }

    def load(self, data: Mapping[str, Any]) -> None:
        if data.get("v") != _STATE_VERSION:
            log.warning("counter %s: unknown state version %r, starting afresh",
                        self.spec.code, data.get("v"))
            return
        self.prev_ts = None if data["prev_ts"] is None else int(data["prev_ts"])
        self.prev_raw = float(data["prev_raw"])
        self.offset = float(data["offset"])
        self.open = {}
        for name, odata in data["open"].items():
            period = Period(name)
            if period in self.periods:
                self.open[period] = _Open.load(odata)
        if self.prev_ts is not None:
            for period in self.periods:          # a period enabled since the state was saved
                if period not in self.open:
                    self.open[period] = self._fresh(
                        period, self.prev_ts, self.prev_raw + self.offset, 0)

    # -- arithmetic --------------------------------------------------------------------------
    def _limit(self, dt_ms: int) -> float | None:
        if self.spec.max_rate is None:
            return None
        hours = max(dt_ms / 3_600_000, _MIN_RATE_WINDOW_H)
        return self.spec.max_rate * hours

    def _step(self, dt_ms: int, raw: float) -> tuple[float, str | None]:
        """Delta added to ``C`` by the step from ``prev_raw`` to ``raw``, and its anomaly."""
        prev = self.prev_raw
        limit = self._limit(dt_ms)
        if raw >= prev:
            delta = raw - prev
            if limit is not None and delta > limit:
                log.warning("counter %s: jump %.6g exceeds %.6g, counted as 0",
                            self.spec.code, delta, limit)
                return 0.0, Quality.OUT_OF_RANGE
            return delta, None
        cmax = self.spec.counter_max
        if cmax is not None and prev >= cmax * (1 - _WRAP_WINDOW):
            wrapped = None
            if 0 <= raw <= cmax * _WRAP_WINDOW:                  # unsigned: wraps to 0
                wrapped = cmax - prev + raw
            elif -cmax <= raw <= -cmax * (1 - _WRAP_WINDOW):    # signed: wraps to -cmax
                wrapped = 2 * cmax - prev + raw
            if wrapped is not None and wrapped >= 0 and (limit is None or wrapped <= limit):
                return wrapped, Quality.ROLLOVER
        given = raw if (limit is not None and 0 <= raw <= limit) else 0.0
        log.warning("counter %s went back from %.6g to %.6g: counter reset, counted %.6g",
                    self.spec.code, prev, raw, given)
        return given, Quality.COUNTER_RESET

    def _fresh(self, period: Period, ts: int, cum: float | None, tol: int) -> _Open:
        """The open interval for a (re)start at sample ``ts``: known only on a boundary."""
        start = period_start(period, ts + tol)
        if abs(ts - start) <= tol and cum is not None:
            return _Open(start, cum, False, set())
        return _Open(period_start(period, ts), None, False, set())

    def feed(self, ts: int, raw: float, tol: int, max_gap: int) -> list[Reading]:
        if not math.isfinite(raw):
            log.warning("counter %s: non-finite sample %r ignored", self.spec.code, raw)
            return []
        if self.prev_ts is None or ts - self.prev_ts > max_gap:
            if self.prev_ts is not None:
                log.warning("counter %s: gap of %.1f days exceeds the maximum, not filled",
                            self.spec.code, (ts - self.prev_ts) / 86_400_000)
            self.prev_ts, self.prev_raw, self.offset = ts, raw, 0.0
            self.open = {p: self._fresh(p, ts, raw, tol) for p in self.periods}
            return []
        if ts <= self.prev_ts:
            log.warning("counter %s: sample at %d not after %d, ignored",
                        self.spec.code, ts, self.prev_ts)
            return []

        t0 = self.prev_ts
        c0 = self.prev_raw + self.offset
        delta, anomaly = self._step(ts - t0, raw)
        c1 = c0 + delta
        if anomaly is not None:      # keep C = raw + offset; it moves only at an anomaly
            self.offset = c1 - raw
        step_flags: set[str] = {anomaly} if anomaly else set()
        span = ts - t0

        out: list[Reading] = []
        for period in self.periods:
            cur = self.open[period]
            while True:
                end = period_end(period, cur.start)
                if end > ts + tol:
                    break
                if abs(ts - end) <= tol:
                    c_end, est = c1, False
                else:
                    frac = (end - t0) / span
                    c_end, est = c0 + delta * min(1.0, max(0.0, frac)), True
                if cur.cum is not None:
                    flags = cur.flags | step_flags
                    if est or cur.estimated:
                        flags.add(Quality.ESTIMATED)
                    value = max(0.0, c_end - cur.cum)
                    out.append(Reading(self.spec.code, period, cur.start, value, _worst(flags)))
                cur = _Open(end, c_end, est, set())
            if ts > cur.start + tol:
                cur.flags |= step_flags
            self.open[period] = cur

        self.prev_ts, self.prev_raw = ts, raw
        return out


def _worst(flags: set[str]) -> str:
    for word in _SEVERITY:
        if word in flags:
            return str(word)
    return str(Quality.GOOD)


class ConsumptionTracker:
    """Interval consumption for a set of counter points; see the module docstring.

    ``feed(code, ts_ms, value)`` returns every interval reading the sample completes.
    ``state()``/``state(codes)`` gives JSON-able per-point state (``{code: {...}}``) and
    ``restore(state)`` (or the ``state=`` argument) continues from it; unknown codes in the
    state are ignored, points without state start afresh.
    """

    def __init__(
        self,
        specs: Iterable[CounterSpec],
        *,
        state: Mapping[str, Any] | None = None,
        tolerance_ms: int = DEFAULT_TOLERANCE_MS,
        max_gap_ms: int = DEFAULT_MAX_GAP_MS,
    ) -> None:
        self.tolerance_ms = tolerance_ms
        self.max_gap_ms = max_gap_ms
        self._points: dict[str, _PointTracker] = {s.code: _PointTracker(s) for s in specs}
        if state:
            self.restore(state)

    @classmethod
    def for_meters(cls, meters: Iterable[Any], state: Mapping[str, Any] | None = None,
                   **options: int) -> ConsumptionTracker:
        """A tracker for every counter point of ``meters`` (``gateway._model.MeterConfig``),
        each with its meter's poll interval; ``options``: ``tolerance_ms``, ``max_gap_ms``."""
        specs = [CounterSpec.from_point(p, m.interval)
                 for m in meters for p in m.points if p.counter]
        return cls(specs, state=state, **options)

    @classmethod
    def for_points(cls, points: Iterable[Any], intervals: Mapping[str, int],
                   state: Mapping[str, Any] | None = None,
                   **options: int) -> ConsumptionTracker:
        """A tracker for ``points`` (``PointConfig``), ``intervals`` giving each point's poll
        interval in seconds *by point code* (see :meth:`for_meters` to take them from meters)."""
        specs = []
        for p in points:
            if p.code not in intervals:
                raise KeyError(f"no poll interval for counter point {p.code!r} "
                               "(intervals are keyed by point code; or use for_meters)")
            specs.append(CounterSpec.from_point(p, intervals[p.code]))
        return cls(specs, state=state, **options)

    @property
    def codes(self) -> tuple[str, ...]:
        return tuple(self._points)

    def periods(self, code: str) -> tuple[Period, ...]:
        """The interval periods ``code`` yields (from its poll interval)."""
        return self._points[code].periods

    def feed(self, code: str, ts_ms: int, value: float) -> list[Reading]:
        """Feed one counter sample; returns the interval readings it completes (maybe none).

        Raises ``KeyError`` for a code that is not a tracked counter.
        """
        return self._points[code].feed(ts_ms, float(value), self.tolerance_ms, self.max_gap_ms)

    def state(self, codes: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """JSON-able state of all points, or of ``codes`` only (e.g. those fed this cycle)."""
        wanted = self._points if codes is None else codes
        return {code: self._points[code].dump() for code in wanted}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a ``state()`` (possibly merged from several partial ones)."""
        for code, data in state.items():
            point = self._points.get(code)
            if point is None:
                log.info("counter state for unknown point %s ignored", code)
                continue
            point.load(data)
