"""Store benchmark: append throughput against a bare-table ceiling, bytes per reading, and the
resident memory of a gateway-like process as the store grows to 10 million readings.

Run: ``.venv/bin/python bench/bench_store.py`` (about two minutes; ``--quick`` for a smoke run).

Throughput: the same pre-built readings, 500 per transaction (one poll cycle), go through
``Store.append_cycle`` and, side by side, through a bare ``executemany`` into a bare table
with no index (the ceiling) under the same journal and durability settings (WAL,
synchronous=FULL). A second ceiling with SQLite's defaults (rollback journal) is shown for
reference.

Memory: a child process holds an open Store and, on command, runs a gateway-like loop (append
a 500-reading cycle, query the last minutes) for a few seconds and reports its RSS; between
those runs the parent bulk-fills the same file (one INSERT … SELECT per million rows) to 1, 5
and 10 million readings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway._model import MeterConfig, PointConfig  # noqa: E402
from gateway._store import Store  # noqa: E402
from protocol import Period, Quality, Reading  # noqa: E402

POINTS = 1000
PER_TX = 500
T0 = 1_790_000_000_000
CODES = [f"0101000{i:05d}0100" for i in range(POINTS)]   # 16-character data-item codes


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.platform()} | {cpu} x{os.cpu_count()} | Python "
            f"{platform.python_version()} | SQLite {sqlite3.sqlite_version}")


def make_cycles(total: int) -> list[list[Reading]]:
    rng = random.Random(7)
    cycles = []
    for k in range(total // PER_TX):
        ts = T0 + (k * PER_TX // POINTS) * 60_000
        first = (k * PER_TX) % POINTS
        cycles.append([Reading(CODES[first + i], Period.INSTANT, ts, round(rng.uniform(0, 1e5), 2),
                               Quality.GOOD if rng.random() > 0.01 else Quality.COMM_ERROR)
                       for i in range(PER_TX)])
    return cycles


def meters() -> list[MeterConfig]:
    return [MeterConfig(f"m{i // 10}", "bus", str(i // 10),
                        tuple(PointConfig(CODES[j], unit="kWh", energy="electricity")
                              for j in range(i, i + 10)))
            for i in range(0, POINTS, 10)]


def bench_store(path: Path, cycles: list[list[Reading]]) -> tuple[float, float]:
    with Store(path) as store:
        store.register_points(meters())
        start = time.perf_counter()
        for k, cycle in enumerate(cycles):
            store.append_cycle(cycle, {"cycle": k})
        elapsed = time.perf_counter() - start
        n = sum(len(c) for c in cycles)
        assert store.count() == n
        store.prune(now_ms=T0)   # checkpoint + truncate the WAL, so the file alone is measured
        size = os.path.getsize(path)
    return n / elapsed, size / n


def bench_bare(path: Path, cycles: list[list[Reading]], wal: bool) -> tuple[float, float]:
    rows = [[(r.point, str(r.period), r.ts, r.value, str(r.quality)) for r in c] for c in cycles]
    conn = sqlite3.connect(path, isolation_level=None)
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE r (point TEXT, period TEXT, ts INTEGER, value REAL, quality TEXT)")
    start = time.perf_counter()
    for batch in rows:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?)", batch)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    n = sum(len(c) for c in rows)
    if wal:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return n / elapsed, os.path.getsize(path) / n


def throughput(total: int, rounds: int) -> None:
    cycles = make_cycles(total)
    results: dict[str, list[tuple[float, float]]] = {"store": [], "bare": [], "bare-default": []}
    with tempfile.TemporaryDirectory(prefix="kemon-bench-") as tmp:
        for rnd in range(rounds):
            results["store"].append(bench_store(Path(tmp) / f"s{rnd}.db", cycles))
            results["bare"].append(bench_bare(Path(tmp) / f"b{rnd}.db", cycles, wal=True))
            results["bare-default"].append(
                bench_bare(Path(tmp) / f"d{rnd}.db", cycles, wal=False))
    med = {k: (statistics.median(r for r, _ in v), v[0][1]) for k, v in results.items()}
    ceiling = med["bare"][0]
    print(f"\nAppend throughput: {total:,} readings, {PER_TX} per transaction, "
          f"{POINTS} points, median of {rounds} rounds")
    print(f"{'path':<46}{'readings/s':>12}{'of ceiling':>12}{'bytes/reading':>15}")
    labels = {
        "store": "Store.append_cycle (WAL, synchronous=FULL)",
        "bare": "bare executemany, no index (WAL, FULL)",
        "bare-default": "bare executemany, no index (SQLite defaults)",
    }
    for key, label in labels.items():
        rate, size = med[key]
        print(f"{label:<46}{rate:>12,.0f}{rate / ceiling:>12.2f}{size:>15.1f}")
    rate = med["store"][0]
    verdict = "met" if rate >= 100_000 and rate / ceiling >= 0.4 else "NOT met"
    print(f"goal >= 100,000 readings/s and >= 0.4 of the ceiling: {verdict}")


# -- memory ----------------------------------------------------------------------------------

def holder(path: str) -> None:
    """Child: hold a Store open; on 'run S' act like a gateway for S seconds, report RSS."""
    proc = psutil.Process()
    store = Store(path)
    minute = 0
    base = T0 + 10**9                     # after everything the parent bulk-fills
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "quit":
            break
        seconds = float(cmd[1])
        end = time.monotonic() + seconds
        cycles = queried = 0
        while time.monotonic() < end:
            ts = base + minute * 60_000
            first = (minute * PER_TX) % POINTS
            store.append_cycle([Reading(CODES[first + i], Period.INSTANT, ts, float(minute))
                                for i in range(PER_TX)], {"minute": minute})
            queried += sum(1 for _ in store.query(since_ms=ts - 5 * 60_000))
            queried += sum(1 for _ in store.query(point=CODES[first], period=Period.INSTANT,
                                                  since_ms=ts - 3_600_000))
            minute += 1
            cycles += 1
        print(json.dumps({"rss": proc.memory_info().rss, "cycles": cycles,
                          "queried": queried, "count": store.count()}), flush=True)
    store.close()


def bulk_fill(path: Path, upto: int) -> float:
    """Grow the reading table to ``upto`` rows with INSERT … SELECT (schema of _store_schema)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    have = conn.execute("SELECT count(*) FROM reading WHERE ts < ?", (T0 + 10**9,)).fetchone()[0]
    start = time.perf_counter()
    step = 1_000_000
    while have < upto:
        n = min(step, upto - have)
        conn.execute("BEGIN")
        conn.execute(
            "WITH RECURSIVE c(x) AS (SELECT ? UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
            "INSERT INTO reading (point_id, period, ts, value, quality) "
            "SELECT 1 + x % ?, 0, ? + (x / ?) * 60000, x * 0.25, 0 FROM c",
            (have, have + n - 1, POINTS, T0, POINTS))
        conn.execute("COMMIT")
        have += n
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - start


def memory(targets: list[int], seconds: float) -> None:
    print(f"\nResident memory of a process holding the Store (gateway-like loop for {seconds:g} s "
          "per sample: append 500 readings, query the last 5 min and one point's last hour)")
    print(f"{'readings stored':>16}{'RSS MB':>10}{'cycles/s':>10}{'file MB':>10}{'fill s':>9}")
    with tempfile.TemporaryDirectory(prefix="kemon-bench-") as tmp:
        path = Path(tmp) / "store.db"
        with Store(path) as store:
            store.register_points(meters())
        child = subprocess.Popen([sys.executable, __file__, "--holder", str(path)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        rss = []
        try:
            for target in [0, *targets]:
                fill = bulk_fill(path, target) if target else 0.0
                child.stdin.write(f"run {seconds}\n")
                child.stdin.flush()
                report = json.loads(child.stdout.readline())
                rss.append(report["rss"] / 1e6)
                size = sum(os.path.getsize(p) for p in Path(tmp).iterdir()) / 1e6
                print(f"{report['count']:>16,}{rss[-1]:>10.1f}{report['cycles'] / seconds:>10.0f}"
                      f"{size:>10.0f}{fill:>9.1f}")
            child.stdin.write("quit\n")
            child.stdin.flush()
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    growth = rss[-1] - rss[1] if len(rss) > 2 else 0.0
    verdict = "met" if max(rss) < 80 and abs(growth) < 10 else "NOT met"
    print(f"goal < 80 MB and flat (growth from the first filled sample {growth:+.1f} MB): "
          f"{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--holder", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    if args.holder:
        holder(args.holder)
        return
    print(f"machine: {machine()}")
    if args.quick:
        throughput(50_000, 1)
        memory([100_000, 200_000], 1.0)
    else:
        throughput(400_000, 3)
        memory([1_000_000, 5_000_000, 10_000_000], 5.0)


if __name__ == "__main__":
    main()
