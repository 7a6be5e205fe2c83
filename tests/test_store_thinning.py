"""Tiered retention: instants older than ``full_resolution_days`` are thinned to the
15-minute grid, interval readings stay, undelivered rows are never touched; and the size
estimate that `kemon gateway check` prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway._config import load_config
from gateway._sizing import BYTES_PER_READING, estimate_store
from gateway._store import Store
from protocol import Period, Reading

from .conftest import UNIT, run_kemon

DAY = 86_400_000
T0 = 1_795_795_200_000          # 2026-11-28T00:00:00+08:00


def minutes(store: Store, first: int, count: int) -> None:
    for n in range(first, first + count):
        ts = T0 + n * 60_000
        batch = [Reading("e", Period.INSTANT, ts, float(n))]
        if ts % 900_000 == 0:
            batch.append(Reading("e", Period.MIN15, ts - 900_000, 15.0))
        store.append_cycle(batch)


def test_old_instants_thin_to_the_quarter_hours(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", full_resolution_days=1, retention_days=10) as store:
        minutes(store, 0, 3 * 24 * 60)                          # three days, every minute
        now = T0 + 3 * DAY
        store.prune(now_ms=now)
        old = list(store.query(point="e", period=Period.INSTANT, until_ms=now - DAY))
        recent = list(store.query(point="e", period=Period.INSTANT, since_ms=now - DAY))
        quarters = list(store.query(point="e", period=Period.MIN15))
        assert [r.ts for r in old] == list(range(T0, now - DAY, 900_000))
        assert len(recent) == 24 * 60                           # the last day untouched
        assert len(quarters) == 3 * 96                           # intervals all kept
        # a second pass starts at the watermark and finds nothing more to do
        assert store.prune(now_ms=now).deleted_by_age == 0


def test_thinning_spares_undelivered_rows(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", full_resolution_days=1) as store:
        minutes(store, 0, 2 * 24 * 60)
        now = T0 + 2 * DAY
        protected = store.after(0, 1)[0][0]                     # nothing delivered yet
        store.prune(now_ms=now, protected_from_id=protected)
        first_hour = list(store.query(point="e", period=Period.INSTANT,
                                      until_ms=T0 + 3_600_000))
        assert len(first_hour) > 4                               # not thinned yet
        store.prune(now_ms=now)                                  # delivered now: thinned
        first_hour = list(store.query(point="e", period=Period.INSTANT,
                                      until_ms=T0 + 3_600_000))
        assert [r.ts for r in first_hour] == [T0 + k * 900_000 for k in range(4)]


def site(tmp_path: Path, interval: int, budget_mb: int, full_days: int = 31) -> Path:
    path = tmp_path / "g.toml"
    path.write_text(f"""
[gateway]
id = "G"
unit = "{UNIT}"
data_dir = "d"
[store]
retention_days = 200
disk_budget_mb = {budget_mb}
full_resolution_days = {full_days}
[[bus]]
name = "lan"
kind = "modbus-tcp"
host = "127.0.0.1"
[[meter]]
name = "m"
bus = "lan"
address = 1
profile = "sdm630"
interval = {interval}
""", encoding="utf-8")
    return path


def test_estimate_counts_polls_thinning_and_intervals(tmp_path: Path) -> None:
    cfg = load_config(site(tmp_path, 60, 2048))
    points = len(cfg.meters[0].points)
    counters = sum(p.counter for p in cfg.meters[0].points)
    intervals = counters * (96 + 24 + 1 + 1 / 30.4)
    est = estimate_store(cfg)
    assert est.full_per_day == pytest.approx(points * 1440 + intervals)
    assert est.thinned_per_day == pytest.approx(points * 96 + intervals)
    assert est.retention_bytes == pytest.approx(
        (est.full_per_day * 31 + est.thinned_per_day * 169) * BYTES_PER_READING, rel=1e-6)
    assert est.fits and est.days_that_fit == 200


def test_check_warns_when_the_budget_is_too_small(tmp_path: Path) -> None:
    ok = run_kemon("gateway", "check", "-c", str(site(tmp_path, 60, 2048)))
    assert ok.returncode == 0 and "warning" not in ok.stderr
    assert "readings a day" in ok.stdout
    small = run_kemon("gateway", "check", "-c", str(site(tmp_path, 5, 64)))
    assert small.returncode == 0                     # a warning, not an error
    assert "store.disk_budget_mb: 64 MB holds only about" in small.stderr
