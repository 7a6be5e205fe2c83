"""The collector's storage, every behaviour against both back ends: SQLite and a real PostgreSQL
(a private cluster the tests start: tests/pg.py).

Batches are really sealed (Ed25519), so payloads and hashes are what the ingest stores.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from collector._pg_storage import PgStorage
from collector._records import GatewayStatus, Quarantined, VerifiedBatch
from collector._storage import (
    Storage,
    StorageError,
    StorageUnavailableError,
    StorageURLError,
    open_storage,
    redact_url,
    sqlite_path,
)
from protocol import ZERO_HASH, Batch, Period, Reading, batch_hash, make_credit_code, seal
from tests.pg import PostgresCluster, pg_url, postgres  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent
UNIT = "91320100MA1ABCDE0C"
UNIT2 = make_credit_code("320200", "MA1BCD01")
T0 = 1_789_999_200_000          # 2026-09-21 22:00 CST, on the 15-minute grid
# Ed25519 signatures are deterministic: every process seals a batch into the same bytes, as a
# gateway's one sealed copy reaches two collectors
KEY = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


def readings(points: Sequence[str], ts: Sequence[int], value: float = 1.0,
             period: Period = Period.INSTANT, quality: str = "good") -> tuple[Reading, ...]:
    return tuple(Reading(p, period, t, value + i, quality)
                 for t in ts for i, p in enumerate(points))


def sealed(seq: int, rs: Sequence[Reading], *, unit: str = UNIT, gateway: str = "GW0001",
           kind: str = "data", received: int | None = None,
           via: tuple[str, ...] = ()) -> VerifiedBatch:
    batch = Batch(unit, gateway, seq, ZERO_HASH, kind, T0, tuple(rs),
                  {"request": "r1"} if kind == "resend" else None)
    payload = seal(batch, KEY)
    return VerifiedBatch(batch, payload, batch_hash(payload),
                         T0 + seq * 1000 if received is None else received, via=via)


def points(n: int) -> list[str]:
    return [f"{i:016d}" for i in range(1, n + 1)]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/collector.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def storage(db_url: str) -> Iterator[Storage]:
    s = open_storage(db_url)
    try:
        yield s
    finally:
        s.close()


def count_readings(s: Storage) -> int:
    return sum(1 for _ in s.readings())


# ---------------------------------------------------------------- exactly once

def test_store_and_read_back(storage: Storage) -> None:
    assert isinstance(storage, Storage)
    rs = readings(points(3), [T0, T0 + 60_000])
    assert storage.store([sealed(1, rs)]) == 6
    got = list(storage.readings())
    assert [(r.point, r.ts, r.value) for r in got] == [(r.point, r.ts, r.value) for r in rs]
    assert got[0].to_json_dict() == {
        "unit": UNIT, "gateway": "GW0001", "point": "0000000000000001", "period": "instant",
        "ts": "2026-09-21T22:00:00+08:00", "value": 1.0, "quality": "good"}


def test_same_batch_twice_is_stored_once(storage: Storage) -> None:
    vb = sealed(1, readings(points(5), [T0]))
    assert storage.store([vb]) == 5
    assert storage.store([vb]) == 0
    assert storage.store([vb, vb]) == 0
    assert count_readings(storage) == 5
    [row] = storage.gateways()
    assert (row.batches, row.readings, row.quarantined) == (1, 5, 0)
    assert storage.quarantine_counts() == {}
    assert [b.id for b in storage.relay_batches_after("n", 0, 10)] == [1]


def test_duplicate_within_one_call_is_stored_once(storage: Storage) -> None:
    vb = sealed(1, readings(points(5), [T0]))
    assert storage.store([vb, vb]) == 5
    assert storage.gateways()[0].batches == 1


def test_resent_readings_in_another_batch_are_stored_once(storage: Storage) -> None:
    first = readings(points(4), [T0, T0 + 60_000])
    assert storage.store([sealed(1, first)]) == 8
    # the gateway resends history in a new batch (new seq) that overlaps and adds 4 readings
    resend = readings(points(4), [T0 + 60_000, T0 + 120_000])
    assert storage.store([sealed(2, resend, kind="resend")]) == 4
    assert count_readings(storage) == 12
    [row] = storage.gateways()
    assert (row.batches, row.readings, row.last_seq, row.gaps) == (2, 12, 2, 0)


def test_data_batch_overlapping_stored_readings_stores_only_new_ones(storage: Storage) -> None:
    # PostgreSQL COPYs a data batch straight into reading; a stored key makes it fall back
    # to the staging table's ON CONFLICT insert, in the same transaction
    assert storage.store([sealed(1, readings(points(4), [T0, T0 + 60_000]))]) == 8
    overlap = sealed(2, readings(points(4), [T0 + 60_000, T0 + 120_000]))
    later = sealed(1, readings(points(2), [T0]), gateway="GW0002")
    assert storage.store([overlap, later]) == 6
    assert count_readings(storage) == 14
    rows = storage.gateways()
    assert [(r.gateway, r.batches, r.readings) for r in rows] == [("GW0001", 2, 12),
                                                                ("GW0002", 1, 2)]
    if isinstance(storage, PgStorage):
        assert storage._direct_misses == 1      # the first call went straight in


def test_conflicting_batch_is_quarantined_and_nothing_overwritten(storage: Storage) -> None:
    original = sealed(1, readings(points(2), [T0], value=10.0))
    assert storage.store([original]) == 2
    forged = sealed(1, readings(points(3), [T0, T0 + 60_000], value=99.0))
    assert forged.hash != original.hash
    assert storage.store([forged]) == 0
    assert storage.batch_hash(UNIT, "GW0001", 1) == original.hash
    assert sorted((r.point, r.value) for r in storage.readings()) == [
        ("0000000000000001", 10.0), ("0000000000000002", 11.0)]
    assert storage.quarantine_counts() == {"conflict": 1}
    [row] = storage.gateways()
    assert (row.batches, row.readings, row.quarantined) == (1, 2, 1)
    assert len(storage.relay_batches_after("n", 0, 10)) == 1


def test_conflict_within_one_call(storage: Storage) -> None:
    a = sealed(7, readings(points(1), [T0], value=1.0))
    b = sealed(7, readings(points(1), [T0], value=2.0))
    assert storage.store([a, b]) == 1
    assert storage.batch_hash(UNIT, "GW0001", 7) == a.hash
    assert storage.quarantine_counts() == {"conflict": 1}


def test_one_call_is_one_transaction(storage: Storage) -> None:
    good = sealed(1, readings(points(2), [T0]))
    bad = sealed(2, readings(points(2), [T0 + 60_000]))
    # a record the database must refuse (NOT NULL kind) after the readings in the same call
    broken = Quarantined(topic="t", reason="r", kind=None, payload=b"",  # type: ignore[arg-type]
                         received=T0)
    with pytest.raises(StorageError):
        storage.store([good, bad], [broken])
    assert count_readings(storage) == 0
    assert storage.last_batch(UNIT, "GW0001") is None
    assert storage.store([good, bad]) == 4


def test_quarantined_records_are_kept_and_counted(storage: Storage) -> None:
    storage.record_status(GatewayStatus(UNIT, "GW0001", "online", T0))
    junk = [Quarantined(f"kemon/v1/{UNIT}/GW0001/up/data", "not a Kemon batch", "format",
                        b"\x00" * 10, T0, UNIT, "GW0001"),
            Quarantined(f"kemon/v1/{UNIT}/GW0001/up/data", "signature does not verify",
                        "signature", b"KEMB" * 100_000, T0, UNIT, "GW0001", 3),
            Quarantined(f"kemon/v1/{UNIT}/GW0009/up/data", "unknown", "certificate", b"",
                        T0, UNIT, "GW0009")]
    assert storage.store([], junk) == 0
    assert storage.quarantine_counts() == {"certificate": 1, "format": 1, "signature": 1}
    # counted on the inventory row of a known gateway; no row made up for an unknown one
    assert [(g.gateway, g.quarantined) for g in storage.gateways()] == [("GW0001", 2)]


# ---------------------------------------------------------------- chain, inventory, pins

def test_stored_chain_answers_a_group_s_questions(storage: Storage) -> None:
    one, two = sealed(1, readings(points(1), [T0])), sealed(2, readings(points(1), [T0 + 1]))
    other = sealed(7, readings(points(1), [T0]), gateway="GW0002")
    storage.store([one, two, other])
    hashes, lasts = storage.stored_chain(
        [(UNIT, "GW0001", 1), (UNIT, "GW0001", 3), (UNIT, "GW0002", 7), (UNIT, "GW0003", 1)],
        [(UNIT, "GW0001"), (UNIT, "GW0002"), (UNIT, "GW0003")])
    assert hashes == {(UNIT, "GW0001", 1): one.hash, (UNIT, "GW0002", 7): other.hash}
    assert lasts == {(UNIT, "GW0001"): (2, two.hash), (UNIT, "GW0002"): (7, other.hash)}
    assert storage.stored_chain([], []) == ({}, {})


def test_missing_seqs_finds_gaps_and_they_close(storage: Storage) -> None:
    for seq in (1, 2, 5, 9):
        storage.store([sealed(seq, readings(points(1), [T0 + seq * 60_000]))])
    assert storage.missing_seqs(UNIT, "GW0001") == [(3, 4), (6, 8)]
    assert storage.missing_seqs(UNIT, "GW0001", limit=1) == [(3, 4)]
    assert storage.gateways()[0].gaps == 5
    assert storage.missing_seqs(UNIT, "GW0002") == []
    storage.store([sealed(s, readings(points(1), [T0 + s * 60_000])) for s in (3, 4, 7)])
    assert storage.missing_seqs(UNIT, "GW0001") == [(6, 6), (8, 8)]
    storage.store([sealed(s, readings(points(1), [T0 + s * 60_000])) for s in (8, 6)])
    assert storage.missing_seqs(UNIT, "GW0001") == []
    [row] = storage.gateways()
    assert (row.gaps, row.batches, row.last_seq) == (0, 9, 9)


def test_last_batch_and_batch_hash(storage: Storage) -> None:
    assert storage.last_batch(UNIT, "GW0001") is None
    vbs = [sealed(s, readings(points(1), [T0 + s])) for s in (3, 1, 2)]
    storage.store(vbs)
    assert storage.last_batch(UNIT, "GW0001") == (3, vbs[0].hash)
    assert storage.batch_hash(UNIT, "GW0001", 1) == vbs[1].hash
    assert storage.batch_hash(UNIT, "GW0001", 4) is None
    assert storage.batch_hash(UNIT, "GW0002", 1) is None


def test_inventory_and_status(storage: Storage) -> None:
    storage.store([sealed(1, readings(points(3), [T0]), received=T0 + 5_000),
                   sealed(1, readings(points(2), [T0]), gateway="GW0002", received=T0)])
    storage.store([sealed(1, readings(points(1), [T0]), unit=UNIT2, received=T0)])
    rows = {(g.unit, g.gateway): g for g in storage.gateways()}
    assert [(g.unit, g.gateway) for g in storage.gateways()] == sorted(rows)
    one = rows[UNIT, "GW0001"]
    assert (one.status, one.version, one.last_seen, one.last_seq, one.batches,
            one.readings) == ("unknown", None, T0 + 5_000, 1, 1, 3)

    storage.record_status(GatewayStatus(UNIT, "GW0001", "online", T0 + 10_000, "1.2.0",
                                        "-----BEGIN CERTIFICATE-----"))
    one = {g.gateway: g for g in storage.gateways() if g.unit == UNIT}["GW0001"]
    assert (one.status, one.version, one.last_seen) == ("online", "1.2.0", T0 + 10_000)
    storage.record_status(GatewayStatus(UNIT, "GW0001", "offline", T0 + 20_000))
    # an older message arriving late changes nothing
    storage.record_status(GatewayStatus(UNIT, "GW0001", "online", T0 + 15_000, "0.9"))
    one = {g.gateway: g for g in storage.gateways() if g.unit == UNIT}["GW0001"]
    assert (one.status, one.version, one.last_seen) == ("offline", "1.2.0", T0 + 20_000)
    # a gateway known only by its birth message
    storage.record_status(GatewayStatus(UNIT, "GW0003", "online", T0, "1.0"))
    three = {g.gateway: g for g in storage.gateways() if g.unit == UNIT}["GW0003"]
    assert (three.status, three.batches, three.last_seq, three.gaps) == ("online", 0, None, 0)
    assert three.to_json_dict()["last_seen"] == "2026-09-21T22:00:00+08:00"
    with pytest.raises(ValueError, match="neither online nor offline"):
        storage.record_status(GatewayStatus(UNIT, "GW0001", "sleeping", T0))


def test_certificate_pinning(storage: Storage) -> None:
    assert storage.pinned_certificate(UNIT, "GW0001") is None
    storage.pin_certificate(UNIT, "GW0001", "PEM-A")
    assert storage.pinned_certificate(UNIT, "GW0001") == "PEM-A"
    storage.pin_certificate(UNIT, "GW0001", "PEM-B")           # first pin stays
    assert storage.pinned_certificate(UNIT, "GW0001") == "PEM-A"
    storage.pin_certificate(UNIT, "GW0001", "PEM-C", replace=True)
    assert storage.pinned_certificate(UNIT, "GW0001") == "PEM-C"
    assert storage.pinned_certificate(UNIT, "GW0002") is None
    assert storage.pinned_certificate(UNIT2, "GW0001") is None


# ---------------------------------------------------------------- queries

def _query_fixture(storage: Storage) -> list[tuple[str, str, str, str, int, float, str]]:
    rows: list[tuple[int, str, str, str, str, float, str]] = []
    seq: dict[tuple[str, str], int] = {}
    for unit in (UNIT, UNIT2):
        for gw in ("GW0001", "GW0002"):
            rs = (readings(points(3), [T0 + k * 60_000 for k in range(4)], value=len(rows))
                  + readings(points(2), [T0, T0 + 900_000], period=Period.MIN15,
                             quality="estimated"))
            seq[unit, gw] = seq.get((unit, gw), 0) + 1
            storage.store([sealed(seq[unit, gw], rs, unit=unit, gateway=gw)])
            rows += [(r.ts, unit, gw, r.point, str(r.period), r.value, r.quality) for r in rs]
    order = list(Period)             # periods sort as instant, 15min, hour, day, month
    rows.sort(key=lambda row: (*row[:4], order.index(Period(row[4]))))
    return [(u, g, p, per, ts, v, q) for ts, u, g, p, per, v, q in rows]


@pytest.mark.parametrize("filters", [
    {},
    {"unit": UNIT2},
    {"unit": UNIT, "gateway": "GW0002"},
    {"gateway": "GW0001"},
    {"point": "0000000000000002"},
    {"period": "15min"},
    {"period": Period.INSTANT, "point": "0000000000000003"},
    {"since_ms": T0 + 60_000},
    {"until_ms": T0 + 120_000},
    {"since_ms": T0 + 60_000, "until_ms": T0 + 120_000, "unit": UNIT},
    {"limit": 7},
    {"unit": "nobody"},
    {"point": "no such point"},
])
def test_readings_filters_and_order(storage: Storage, filters: dict[str, object]) -> None:
    everything = _query_fixture(storage)

    def wanted(row: tuple[str, str, str, str, int, float, str]) -> bool:
        unit, gw, point, period, ts = row[:5]
        return ((filters.get("unit") in (None, unit))
                and filters.get("gateway") in (None, gw)
                and filters.get("point") in (None, point)
                and filters.get("period") in (None, period)
                and ts >= filters.get("since_ms", 0)                   # type: ignore[operator]
                and ts < filters.get("until_ms", 2**62))               # type: ignore[operator]

    limit = filters.get("limit")
    expected = [row for row in everything if wanted(row)][:limit if isinstance(limit, int)
                                                          else None]
    got = [(r.unit, r.gateway, r.point, str(r.period), r.ts, r.value, r.quality)
           for r in storage.readings(**filters)]  # type: ignore[arg-type]
    assert got == expected
    assert len(everything) == 4 * 16


def test_readings_stream_beside_writes(storage: Storage) -> None:
    storage.store([sealed(1, readings(points(50), [T0 + k * 1000 for k in range(100)]))])
    stream = storage.readings()
    first = [next(stream) for _ in range(10)]
    # a write while a large result is being read: the stream keeps its own snapshot
    storage.store([sealed(2, readings(points(1), [T0 - 1000]))])
    rest = list(stream)
    assert len(first) + len(rest) == 5000
    assert count_readings(storage) == 5001


# ---------------------------------------------------------------- relay cursors, migrations

def test_relay_batches_in_arrival_order_and_cursor_durable(db_url: str) -> None:
    s = open_storage(db_url)
    try:
        vbs = [sealed(seq, readings(points(2), [T0 + seq]), via=("320000", "x") if seq == 3 else ())
               for seq in (5, 1, 3)]
        for vb in vbs:
            s.store([vb])
        s.store([vbs[0]])                       # a duplicate adds no row
        got = s.relay_batches_after("national", 0, 10)
        assert [b.payload for b in got] == [vb.payload for vb in vbs]     # unchanged bytes
        assert [(b.unit, b.gateway, b.seq, b.via) for b in got] == [
            (vb.unit, vb.gateway, vb.seq, vb.via) for vb in vbs]
        ids = [b.id for b in got]
        assert ids == sorted(ids)
        assert s.relay_batches_after("national", ids[0], 1) == [got[1]]
        assert s.relay_cursor("national") == 0
        s.relay_ack("national", ids[1])
        s.relay_ack("national", ids[0])          # never moves back
        s.relay_ack("backup", ids[2])
        # a resend request from the next level is answered by seq
        assert [b.seq for b in s.stored_batches(vbs[0].unit, vbs[0].gateway, 2, 9, 10)] == [3, 5]
        assert [b.seq for b in s.stored_batches(vbs[0].unit, vbs[0].gateway, 1, 9, 1)] == [1]
        assert s.stored_batches(vbs[0].unit, "OTHER", 1, 9, 10) == []
    finally:
        s.close()
    s = open_storage(db_url)
    try:
        assert s.relay_cursor("national") == ids[1]
        assert s.relay_cursor("backup") == ids[2]
        assert s.relay_cursor("other") == 0
        assert s.relay_batches_after("national", s.relay_cursor("national"), 10) == [got[2]]
    finally:
        s.close()


def _applied_migrations(db_url: str) -> list[str]:
    if db_url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(db_url)) as conn:
            return [name for (name,) in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ? ORDER BY id",
                ("kemon.collector.storage",))]
    with psycopg.connect(db_url) as conn:
        return [name for (name,) in conn.execute("SELECT name FROM _migrations ORDER BY name")]


def test_migrations_recorded_once_and_reopening_is_a_no_op(db_url: str) -> None:
    s = open_storage(db_url)
    s.store([sealed(1, readings(points(2), [T0]))])
    s.close()
    assert _applied_migrations(db_url) == ["0001_collector"]
    for _ in range(2):
        s = open_storage(db_url)
        assert count_readings(s) == 2
        s.close()
    assert _applied_migrations(db_url) == ["0001_collector"]


def test_closed_storage_refuses(storage: Storage) -> None:
    storage.close()
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.store([sealed(1, readings(points(1), [T0]))])
    with pytest.raises(StorageError, match="closed"):
        storage.gateways()
    with pytest.raises(StorageError, match="closed"):
        storage.readings()


# ---------------------------------------------------------------- concurrency and crashes

def _overlapping(worker: int, n_seqs: int = 30) -> list[VerifiedBatch]:
    """Batches of two gateways; the workers share a third of them (the same bytes, as two
    collectors would get a batch twice) and every batch overlaps its neighbours' readings."""
    out = []
    for seq in range(1, n_seqs + 1):
        if seq % 2 == worker % 2 or seq % 3 == 0:
            for gw in ("GW0001", "GW0002"):
                out.append(sealed(seq, readings(points(20), [T0 + seq * 60_000,
                                                             T0 + (seq + 1) * 60_000]),
                                  gateway=gw, received=T0 + seq))
    return out


def _expected_readings(workers: Sequence[int]) -> int:
    keys = {(vb.gateway, r.point, r.ts) for w in workers for vb in _overlapping(w)
            for r in vb.batch.readings}
    return len(keys)


def test_two_writers_in_threads_store_each_reading_once(db_url: str) -> None:
    stores = [open_storage(db_url) for _ in range(2)]
    results: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(worker: int) -> None:
        try:
            start.wait()
            batches = _overlapping(worker)
            total = 0
            for i in range(0, len(batches), 3):
                total += stores[worker].store(batches[i:i + 3])
            results.append(total)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        expected = _expected_readings([0, 1])
        assert sum(results) == expected
        s = stores[0]
        assert count_readings(s) == expected
        rows = s.gateways()
        assert sum(g.readings for g in rows) == expected
        assert [(g.gateway, g.batches, g.last_seq, g.gaps) for g in rows] == [
            ("GW0001", 30, 30, 0), ("GW0002", 30, 30, 0)]
        assert len(s.relay_batches_after("n", 0, 100)) == 60
        assert s.quarantine_counts() == {}
    finally:
        for s in stores:
            s.close()


CHILD_WRITER = """
import sys
from collector._storage import open_storage
from tests.test_collector_storage import _overlapping
url, worker = sys.argv[1], int(sys.argv[2])
s = open_storage(url)                 # both children open (and migrate) a new database at once
batches = _overlapping(worker)
total = 0
for i in range(0, len(batches), 2):
    total += s.store(batches[i:i + 2])
s.close()
print(total)
"""


def test_two_processes_store_each_reading_once(db_url: str) -> None:
    children = [subprocess.Popen([sys.executable, "-c", CHILD_WRITER, db_url, str(w)],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for w in range(2)]
    outputs = []
    try:
        for child in children:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
            outputs.append(int(out))
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
    expected = _expected_readings([0, 1])
    assert sum(outputs) == expected
    s = open_storage(db_url)
    try:
        assert count_readings(s) == expected
        assert sum(g.readings for g in s.gateways()) == expected
        assert sum(g.batches for g in s.gateways()) == 60
        assert _applied_migrations(db_url) == ["0001_collector"]
    finally:
        s.close()


def test_relay_reader_never_passes_a_batch_committed_later(db_url: str) -> None:
    """Two writers store batches while a relay reads ``after cursor`` and acknowledges the
    highest id it saw: in the end it has seen every batch (ids grow in commit order)."""
    writers = [open_storage(db_url) for _ in range(2)]
    relay = open_storage(db_url)
    done = threading.Event()
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for seq in range(1, 61):
                writers[worker].store([sealed(seq, readings(points(5), [T0 + seq]),
                                              gateway=f"GW000{worker + 1}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    seen: set[bytes] = set()
    try:
        cursor = 0
        while True:
            finished = not any(t.is_alive() for t in threads)
            for row_id, *_, payload in relay.relay_batches_after("national", cursor, 7):
                seen.add(payload)
                cursor = row_id
            relay.relay_ack("national", cursor)
            if finished and not relay.relay_batches_after("national", cursor, 1):
                break
        done.set()
        assert not errors, errors
        assert len(seen) == 120
        assert relay.relay_cursor("national") == cursor
    finally:
        for t in threads:
            t.join(30)
        for s in [*writers, relay]:
            s.close()


PER_BATCH = 300

CHILD_CRASH = f"""
import sys
from collector._storage import open_storage
from tests.test_collector_storage import sealed, readings, points, T0
s = open_storage(sys.argv[1])
seq = 0
while True:
    seq += 1
    # each call: one new batch, plus the previous one again (an unacknowledged redelivery)
    batch = sealed(seq, readings(points({PER_BATCH}), [T0 + seq * 60_000]), received=T0 + seq)
    again = [sealed(seq - 1, readings(points({PER_BATCH}), [T0 + (seq - 1) * 60_000]),
                    received=T0 + seq - 1)] if seq > 1 else []
    s.store([*again, batch])
    print(seq, flush=True)
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kill_9_mid_store_keeps_every_reported_commit(db_url: str, seed: int) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD_CRASH, db_url], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.strip() == "1", child.stderr.read() if child.stderr else ""
        time.sleep(random.Random(seed).uniform(0.1, 0.8))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    reported = [1] + [int(line) for line in out.split()]
    assert reported == list(range(1, len(reported) + 1))
    last = reported[-1]
    assert last > 1

    if db_url.startswith("sqlite:"):
        with sqlite3.connect(sqlite_path(db_url)) as conn:     # recovers the WAL
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s = open_storage(db_url)
    try:
        stored = s.last_batch(UNIT, "GW0001")
        assert stored is not None
        # every reported commit, perhaps one more that committed just before the kill
        assert stored[0] in (last, last + 1)
        assert s.missing_seqs(UNIT, "GW0001") == []
        per_ts: dict[int, int] = {}
        for r in s.readings():
            per_ts[r.ts] = per_ts.get(r.ts, 0) + 1
        assert sorted(per_ts) == [T0 + q * 60_000 for q in range(1, stored[0] + 1)]
        assert set(per_ts.values()) == {PER_BATCH}          # whole batches only
        [row] = s.gateways()
        assert (row.batches, row.readings, row.last_seq) == (stored[0], PER_BATCH * stored[0],
                                                             stored[0])
        assert len(s.relay_batches_after("n", 0, 10_000)) == stored[0]
        # and it goes on where it stopped
        assert s.store([sealed(stored[0] + 1, readings(points(1), [T0]))]) == 1
    finally:
        s.close()


# ---------------------------------------------------------------- PostgreSQL specifics

def test_pg_connection_lost_then_recovered(pg_url: str) -> None:  # noqa: F811
    s = open_storage(pg_url)
    try:
        s.store([sealed(1, readings(points(2), [T0]))])
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'kemon-collector'")
        vb = sealed(2, readings(points(2), [T0 + 60_000]))
        first: int | None
        try:
            first = s.store([vb])              # notices the loss: nothing stored, retry later
        except StorageUnavailableError:
            first = None
        assert (first, s.store([vb])) in ((None, 2), (2, 0))     # reconnected
        assert count_readings(s) == 4
        assert s.gateways()[0].batches == 2
    finally:
        s.close()


def test_pg_unreachable_is_unavailable() -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(StorageUnavailableError) as info:
        open_storage(f"postgresql://kemon:secret@127.0.0.1:{port}/nowhere?connect_timeout=2")
    assert "secret" not in str(info.value)


def test_pg_socket_url(postgres: PostgresCluster) -> None:  # noqa: F811
    name = f"socket_{os.getpid()}"
    postgres.create_database(name)
    try:
        s = open_storage(postgres.url(name, via_socket=True))
        try:
            assert s.store([sealed(1, readings(points(3), [T0]))]) == 3
        finally:
            s.close()
    finally:
        postgres.drop_database(name)


# ---------------------------------------------------------------- URLs

@pytest.mark.parametrize(("url", "path"), [
    ("sqlite:///var/lib/kemon/collector.db", "/var/lib/kemon/collector.db"),
    ("sqlite:collector.db", "base/collector.db"),
    ("sqlite:data/my%20db.db", "base/data/my db.db"),
])
def test_sqlite_url_forms(url: str, path: str) -> None:
    assert sqlite_path(url, "base") == Path(path)


@pytest.mark.parametrize("url", [
    "sqlite://host/x.db", "sqlite:", "sqlite:///", "sqlite::memory:", "sqlite:/x.db",
    "sqlite:///x.db?mode=ro", "mysql://x/y", "/var/lib/kemon/collector.db",
])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(StorageURLError):
        open_storage(url)


def test_relative_sqlite_url_is_anchored(tmp_path: Path) -> None:
    s = open_storage("sqlite:sub/c.db", base_dir=tmp_path)
    s.close()
    assert (tmp_path / "sub" / "c.db").exists()


def test_passwords_are_redacted() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://h/db?password=pw&x=1") == "postgresql://h/db?password=***&x=1"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_relay_lease_is_held_by_one_storage_at_a_time(db_url: str) -> None:
    a, b = open_storage(db_url), open_storage(db_url)
    try:
        assert a.relay_lease("national")
        assert a.relay_lease("national")              # asking again while holding it
        assert not b.relay_lease("national")
        assert b.relay_lease("backup")                # another upstream, another lease
        a.close()        # released with the storage (PostgreSQL: once the backend has gone)
        deadline = time.monotonic() + 10
        while not b.relay_lease("national"):
            assert time.monotonic() < deadline, "the lease was not released by close()"
            time.sleep(0.05)
        c = open_storage(db_url)
        try:
            assert not c.relay_lease("national")
        finally:
            c.close()
    finally:
        a.close()
        b.close()
