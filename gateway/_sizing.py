"""How big the store grows: an estimate from the configuration, to warn at ``check`` time when
the disk budget cannot hold the retention asked for. Pure arithmetic.

Bytes per stored reading: 50.9 measured on disk (row and indexes, bench/bench_store.py,
docs/benchmarks.md); 60 is used to leave room for the WAL and page slack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protocol import Period

from ._consumption import periods_for_interval
from ._model import GatewayConfig

__all__ = ["BYTES_PER_READING", "StoreEstimate", "estimate_store"]

BYTES_PER_READING = 60
_PER_DAY = {Period.MIN15: 96.0, Period.HOUR: 24.0, Period.DAY: 1.0, Period.MONTH: 1 / 30.4}


@dataclass(frozen=True, slots=True)
class StoreEstimate:
    full_per_day: float        # readings a day while instants are kept at full resolution
    thinned_per_day: float     # readings a day once instants are thinned to the 15-min grid
    retention_bytes: int       # bytes the whole retention needs
    budget_bytes: int
    days_that_fit: float       # days of history the budget holds

    @property
    def fits(self) -> bool:
        return self.retention_bytes <= self.budget_bytes


def estimate_store(cfg: GatewayConfig) -> StoreEstimate:
    full = thinned = 0.0
    for meter in cfg.meters:
        polls = 86400 / meter.interval
        on_grid = 86400 / math.lcm(meter.interval, 900)
        counters = sum(p.counter for p in meter.points)
        intervals = counters * sum(_PER_DAY[p] for p in periods_for_interval(meter.interval))
        full += len(meter.points) * polls + intervals
        thinned += len(meter.points) * on_grid + intervals
    s = cfg.store
    full_days = min(s.full_resolution_days, s.retention_days)
    need = (full * full_days + thinned * (s.retention_days - full_days)) * BYTES_PER_READING
    budget = s.disk_budget_mb * 1024 * 1024
    full_bytes = full * full_days * BYTES_PER_READING
    if budget >= need:
        days = float(s.retention_days)
    elif budget <= full_bytes:
        days = budget / max(full * BYTES_PER_READING, 1.0)
    else:
        days = full_days + (budget - full_bytes) / max(thinned * BYTES_PER_READING, 1.0)
    return StoreEstimate(full, thinned, int(need), budget, days)
