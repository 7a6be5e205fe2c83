"""The gateway store on real SQLite files: round trips, transactions, readers, pruning, errors."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway._model import MeterConfig, PointConfig
from gateway._store import (
    Store,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreReadOnlyError,
)
from gateway._store_schema import MIGRATIONS
from protocol import Period, Quality, Reading

T0 = 1_790_000_000_000       # 2026-09-21 (any fixed time)
DAY = 86_400_000


def cycle(n: int, points: int = 50, t0: int = T0) -> list[Reading]:
    """One minute's poll of ``points`` points, cycle number ``n``."""
    return [Reading(f"p{i:03d}", Period.INSTANT, t0 + n * 60_000, n + i / 1000.0)
            for i in range(points)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store.db") as s:
        yield s


def test_append_and_query_round_trip(store: Store) -> None:
    meters = [MeterConfig("m1", "bus", "1", (PointConfig("p000", unit="kWh",
                                                         energy="electricity"),))]
    store.register_points(meters)
    day = Reading("p000", Period.DAY, T0 - DAY, 12.5, Quality.ESTIMATED)
    odd = Reading("p001", Period.MIN15, T0, 1.0, "some_new_word")
    assert store.append_cycle([*cycle(2), day, odd]) == 52
    assert store.append_cycle(cycle(1)) == 50

    everything = list(store.query())
    assert len(everything) == 102
    assert [r.ts for r in everything] == sorted(r.ts for r in everything)
    assert everything[0] == day
    assert list(store.query(point="p001", period=Period.MIN15)) == [odd]
    assert list(store.query(point="p000", period="day")) == [day]
    assert [r.value for r in store.query(point="p003", period=Period.INSTANT)] == [1.003, 2.003]
    assert len(list(store.query(since_ms=T0 + 60_000, until_ms=T0 + 120_000))) == 50
    assert len(list(store.query(limit=7))) == 7
    assert list(store.query(point="nope")) == []
    assert {"code": "p000", "unit": "kWh", "energy": "electricity", "meter": "m1"} \
        in store.points()


def test_queries_use_an_index(store: Store) -> None:
    store.append_cycle(cycle(1))
    for plan in (store.query_plan(since_ms=T0), store.query_plan(),
                 store.query_plan(point="p001", period=Period.INSTANT, since_ms=T0),
                 store.query_plan(point="p001", since_ms=T0, until_ms=T0 + DAY),
                 store.query_plan(point="p001", period=Period.DAY, since_ms=T0),
                 store.query_plan(period=Period.MIN15, since_ms=T0)):
        text = " ".join(plan)
        # a full sort would read the whole range first; sorting ties of one ts is fine
        assert "USING INDEX" in text and "TEMP B-TREE FOR ORDER BY" not in text, plan
    assert "reading_day" in " ".join(store.query_plan(point="p001", period=Period.DAY))


def test_duplicates_keep_the_first(store: Store) -> None:
    store.append_cycle(cycle(1))
    again = [Reading(r.point, r.period, r.ts, 999.0) for r in cycle(1)]
    assert store.append_cycle(again) == 0
    assert {r.value for r in store.query()} == {r.value for r in cycle(1)}


def test_one_transaction_per_cycle(tmp_path: Path) -> None:
    statements: list[str] = []
    with Store(tmp_path / "s.db", trace=statements.append) as store:
        store.append_cycle(cycle(0))
        statements.clear()
        store.append_cycle([*cycle(1, points=500), Reading("new", Period.INSTANT, T0, 1.0)],
                           {"consumption": {"p": 1}, "meters": {}})
        begins = [s for s in statements if s.startswith("BEGIN")]
        commits = [s for s in statements if s == "COMMIT"]
        assert len(begins) == 1 and len(commits) == 1
        assert statements[0].startswith("BEGIN") and statements[-1] == "COMMIT"
        assert store.count() == 551


def test_reopen_keeps_readings_state_and_ids(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.append_cycle(cycle(1), {"consumption": {"p001": {"v": 1, "x": [1.5, None]}}})
        last = store.last_id()
    with Store(path) as store:
        assert store.count() == 50
        assert store.load_state("consumption") == {"p001": {"v": 1, "x": [1.5, None]}}
        assert store.load_state("missing") is None
        store.append_cycle(cycle(2))
        ids = [i for i, _ in store.after(last, limit=100)]
        assert len(ids) == 50 and min(ids) > last and ids == sorted(ids)


def test_migrations_recorded_once(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    for _ in range(3):
        Store(path).close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        assert rows == [("kemon.gateway.store", "0001_readings"),
                        ("kemon.gateway.store", "0002_outbox")]
        assert MIGRATIONS.name == "kemon.gateway.store"
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2


def test_reader_beside_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as writer:
        writer.append_cycle(cycle(0, points=3000))
        with Store.open_readonly(path) as reader:
            rows = reader.query()
            first = [next(rows) for _ in range(10)]
            writer.append_cycle(cycle(1, points=3000))        # commits while the reader reads
            assert len(first) + sum(1 for _ in rows) == 3000  # a consistent snapshot
            assert reader.count() == 6000                     # the next read sees the commit
            with pytest.raises(StoreReadOnlyError):
                reader.append_cycle(cycle(2))
            with pytest.raises(StoreReadOnlyError):
                reader.put_state("x", 1)
    # after the writer closed (WAL checkpointed and removed), a reader still opens
    with Store.open_readonly(path) as reader:
        assert reader.count() == 6000


def test_reader_in_another_process_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    code = ("import sys\nfrom gateway._store import Store\n"
            "with Store.open_readonly(sys.argv[1]) as s:\n"
            "    n = 0\n"
            "    for _ in range(40):\n"
            "        n = max(n, s.count())\n"
            "    print(n)\n")
    with Store(path) as writer:
        writer.append_cycle(cycle(0))
        child = subprocess.Popen([os.sys.executable, "-c", code, str(path)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).parent.parent)
        try:
            for n in range(1, 40):
                writer.append_cycle(cycle(n))
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == 0, err
        assert 50 <= int(out) <= 2000


def test_prune_by_age_respects_protection(store: Store) -> None:
    old = cycle(0, t0=T0 - 300 * DAY)
    mid = cycle(0, t0=T0 - 250 * DAY)
    store.append_cycle(old)
    first_mid = store.last_id() + 1
    store.append_cycle(mid)
    store.append_cycle(cycle(1))
    result = store.prune(now_ms=T0, protected_from_id=first_mid)
    assert result.deleted_by_age == 50 and result.deleted_by_budget == 0
    assert store.count() == 100
    result = store.prune(now_ms=T0)
    assert result.deleted_by_age == 50
    assert {r.ts for r in store.query()} == {T0 + 60_000}


def test_prune_by_budget_evicts_oldest_and_shrinks_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path, disk_budget_bytes=4 * 1024 * 1024) as store:
        for n in range(300):
            store.append_cycle(cycle(n, points=500))      # 150,000 readings, ~10 MB
        store.prune(now_ms=T0)                             # (nothing old)
        big = store.file_bytes()
        assert store.used_bytes() <= 4 * 1024 * 1024
        assert store.count() < 150_000
        newest = max(r.ts for r in store.query(since_ms=T0 + 299 * 60_000))
        assert newest == T0 + 299 * 60_000                    # the newest stayed
        oldest = next(store.query())
        assert oldest.ts > T0                                  # the oldest went
        assert big <= 4 * 1024 * 1024 + 64 * 1024
        assert os.path.getsize(path) <= 4 * 1024 * 1024


def test_prune_by_budget_never_evicts_protected_rows(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", disk_budget_bytes=1024 * 1024) as store:
        for n in range(40):
            store.append_cycle(cycle(n, points=500))
        protect = store.last_id() - 9_999          # ~700 kB of undelivered readings
        result = store.prune(now_ms=T0, protected_from_id=protect)
        assert result.over_budget
        assert result.deleted_by_budget == 10_000
        assert store.count() == 10_000
        assert [i for i, _ in store.after(0, 2000)][:1] == [protect]


def test_corrupt_file_and_foreign_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 1000)
    with pytest.raises(StoreCorruptError, match=r"bad\.db"):
        Store(bad)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(StoreError, match="not a Kemon store"):
        Store.open_readonly(other)
    with pytest.raises(StoreError, match="no such file"):
        Store.open_readonly(tmp_path / "absent.db")


def test_closed_store_raises(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.append_cycle(cycle(1))
    with pytest.raises(StoreError, match="closed"):
        list(store.query())


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root, as CI and the developers' machines run)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def fill(store: Store, committed: list[int]) -> None:
    for n in range(10_000):
        store.append_cycle(cycle(n, points=200), {"cycle": n})
        committed.append(n)


def test_disk_full_raises_and_loses_nothing_committed(tiny_disk: Path) -> None:
    path = tiny_disk / "s.db"
    committed: list[int] = []
    store = Store(path)
    try:
        with pytest.raises(StoreFullError, match=r"s\.db.*full") as info:
            fill(store, committed)
        assert "\n" not in str(info.value)
        assert len(committed) > 5
        assert store.load_state("cycle") == committed[-1]
    finally:
        store.close()
    with Store.open_readonly(path) as reader:
        assert reader.count() == 200 * len(committed)
        assert reader.load_state("cycle") == committed[-1]
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_read_only_file_system(tiny_disk: Path) -> None:
    path = tiny_disk / "s.db"
    with Store(path) as store:
        store.append_cycle(cycle(1))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    with pytest.raises(StoreReadOnlyError, match=r"s\.db"):
        with Store(path) as store:
            store.append_cycle(cycle(2))
    with Store.open_readonly(path) as reader:                 # reading still works
        assert reader.count() == 50
