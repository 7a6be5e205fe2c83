"""The collector's back end for scale: PostgreSQL through psycopg 3.

store() is one transaction (READ COMMITTED):

1. the stored hashes of the call's (gateway, seq) pairs decide which batches are new, which are
   duplicates (skipped) and which conflict (quarantined) — ``collector._storage.plan_store``;
2. the new batches' readings, in key order, are bulk-loaded with ``COPY … FROM STDIN (FORMAT
   BINARY)`` straight into ``reading``, inside a savepoint, when every new batch is of kind
   ``data`` (a gateway seals each reading into one data batch, so their readings are new but
   for rare overlaps). A COPY that meets a stored key (or one inserted by a writer that then
   commits: the unique check waits for it) fails whole and is rolled back to the savepoint;
   then — and always for ``resend`` and ``gap`` batches, which rebuild readings that may be
   stored — the readings go through a session's temporary staging table (``ON COMMIT DELETE
   ROWS``) and one ``INSERT … SELECT … ORDER BY <key> ON CONFLICT DO NOTHING``. Either way the
   primary key decides, so a reading is stored once whoever wins; the key order means two
   writers inserting overlapping readings wait for each other in one order, never in a cycle
   (a deadlock). The direct COPY halves the server's work for a group (bench/bench_ingest.py:
   the ON CONFLICT insert is row by row, COPY inserts pages at a time);
3. under a transaction-level advisory lock (``collector._schema.PG_LOCK_RELAY``) the batch rows
   are inserted and the inventory updated, and the transaction commits still holding it. Row
   ids come from an identity sequence, which hands out numbers in call order, not commit order;
   assigning them and committing under one lock makes ``batch.id`` grow in commit order, so the
   relay, reading ``id > cursor``, can never pass over a row that commits later. Only this
   short tail is serialized; the readings load runs in parallel.
   If a concurrent writer stored one of the seqs between step 1 and step 3 (its batch row
   appears when ours is refused), the transaction is rolled back and run again: step 1 then
   sees the stored batch. Deadlock and serialization failures are retried the same way.

Interned ids (unit/gateway, point codes, quality words) are inserted in their own short
autocommit statements before any transaction, so a cached id always names a committed row;
sorted, so two writers never wait on each other in a cycle; and cached in memory: they never
change once committed.

The connection is in autocommit mode with explicit transactions; a broken connection is
replaced at the next call. :meth:`PgStorage.readings` streams through its own connection and a
server-side cursor.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import struct
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors

from protocol import Period

from ._records import GatewayStatus, Quarantined, VerifiedBatch
from ._schema import (
    MIGRATION_SET,
    PERIOD_NAMES,
    PG_LOCK_MIGRATE,
    PG_LOCK_RELAY,
    PG_LOCK_RELAY_LEASE,
    STEPS,
)
from ._storage import (
    InventoryDelta,
    SqlStorage,
    StorageError,
    StorageUnavailableError,
    StoredReading,
    batch_row,
    check_status,
    now_ms,
    plan_store,
    quarantine_row,
    reading_codes,
    reading_rows,
    readings_query,
)

__all__ = ["PgStorage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 10
_RETRIES = 5
_ITERSIZE = 2000
# COPY's binary format (PostgreSQL documentation, COPY, "Binary Format"): a signature, a flags
# field and a header extension length (both 0); per row a 16-bit field count, then each field
# as a 32-bit length and its big-endian bytes (int4, int8, int4, int2, float8, int2 here:
# _COPY_COLUMNS, reading_rows' order); a 16-bit -1 at the end. Packed with struct: a third of
# the time psycopg's per-row write_row takes (bench/bench_ingest.py).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_ROW = struct.Struct(">hiiiqiiihidih")
_COPY_TRAILER = struct.pack(">h", -1)
_CREATE_STAGING = ("CREATE TEMPORARY TABLE IF NOT EXISTS kemon_staging (ts int8, value float8,"
                   " gateway_id int4, point_id int4, period int2, quality int2)"
                   " ON COMMIT DELETE ROWS")
_COPY_COLUMNS = "(gateway_id, ts, point_id, period, value, quality)"
_COPY_STAGING = f"COPY kemon_staging {_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)"
_COPY_READING = f"COPY reading {_COPY_COLUMNS} FROM STDIN (FORMAT BINARY)"
_MOVE_STAGING = (
    "WITH added AS ("
    " INSERT INTO reading (ts, value, gateway_id, point_id, period, quality)"
    " SELECT ts, value, gateway_id, point_id, period, quality FROM kemon_staging"
    " ORDER BY gateway_id, ts, point_id, period"
    " ON CONFLICT (gateway_id, ts, point_id, period) DO NOTHING"
    " RETURNING gateway_id)"
    " SELECT gateway_id, count(*) FROM added GROUP BY gateway_id")
_STORED_CHAIN = (   # ? placeholders: run through _rows
    "SELECT false, k.unit, k.gateway, b.seq, b.hash"
    " FROM unnest(?::text[], ?::text[], ?::int8[]) AS k(unit, gateway, seq)"
    " JOIN gateway g ON g.unit = k.unit AND g.gateway = k.gateway"
    " JOIN batch b ON b.gateway_id = g.id AND b.seq = k.seq"
    " UNION ALL"
    " SELECT true, g.unit, g.gateway, l.seq, l.hash"
    " FROM unnest(?::text[], ?::text[]) AS k(unit, gateway)"
    " JOIN gateway g ON g.unit = k.unit AND g.gateway = k.gateway"
    " CROSS JOIN LATERAL (SELECT b.seq, b.hash FROM batch b WHERE b.gateway_id = g.id"
    " ORDER BY b.seq DESC LIMIT 1) AS l")
_INSERT_BATCHES = (
    "INSERT INTO batch (gateway_id, seq, hash, prev, kind, chain, created, received, count,"
    " via, payload) SELECT * FROM unnest(%s::int4[], %s::int8[], %s::bytea[], %s::bytea[],"
    " %s::text[], %s::text[], %s::int8[], %s::int8[], %s::int4[], %s::text[], %s::bytea[])"
    " ON CONFLICT (gateway_id, seq) DO NOTHING RETURNING gateway_id, seq")
_INSERT_QUARANTINE = ("INSERT INTO quarantine (received, kind, reason, topic, unit, gateway,"
                      " seq, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
_PIN = "INSERT INTO certificate_pin (gateway_id, pem, pinned) VALUES (%s, %s, %s) "
_PIN_FIRST = _PIN + "ON CONFLICT (gateway_id) DO NOTHING"
_PIN_REPLACE = _PIN + ("ON CONFLICT (gateway_id) DO UPDATE SET pem = excluded.pem,"
                       " pinned = excluded.pinned")


def _pg(sql: str) -> str:
    """``?`` placeholders (the shared SQL) as psycopg's ``%s``."""
    return sql.replace("?", "%s")


def _translate(url: str, action: str, exc: psycopg.Error) -> StorageError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    cls = StorageUnavailableError if isinstance(exc, psycopg.OperationalError) \
        else StorageError
    return cls(url, f"{action} failed: {detail}")


class _Raced(Exception):
    """Another writer stored one of our seqs while we were storing: run again."""


class PgStorage(SqlStorage):
    """The collector database in PostgreSQL (``collector._storage`` for the methods)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._gateway_ids: dict[tuple[str, str], int] = {}
        self._point_ids: dict[str, int] = {}
        self._quality_ids: dict[str, int] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = False
        self._direct_misses = 0        # COPYs straight into reading refused (key stored)
        with self._lock:
            conn = self._connection()
            try:
                self._migrate(conn)
                self._load_qualities(conn)
            except psycopg.Error as exc:
                raise _translate(self.url, "migrating", exc) from exc

    # -- connection --------------------------------------------------------------------------
    def _open(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True,
                                   connect_timeout=_CONNECT_TIMEOUT_S,
                                   application_name="kemon-collector")
        except psycopg.Error as exc:
            raise _translate(self.url, "connecting", exc) from exc

    def _connection(self) -> psycopg.Connection[Any]:
        """The live connection, (re)connecting when there is none or it broke."""
        if self._closed:
            raise StorageError(self.url, "storage is closed")
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        if self._conn is not None:
            log.warning("%s: connection lost; reconnecting", self.url)
            self._conn.close()
            self._conn = None
        conn = self._open()
        try:
            conn.execute(_CREATE_STAGING)
        except psycopg.Error as exc:
            conn.close()
            raise _translate(self.url, "preparing the session", exc) from exc
        self._conn = conn
        return conn

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", PG_LOCK_MIGRATE)
            conn.execute("CREATE TABLE IF NOT EXISTS _migrations ("
                         " name TEXT PRIMARY KEY, migration_set TEXT NOT NULL,"
                         " applied_at TEXT NOT NULL)")
            applied = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
            pending = [step for step in STEPS if step.name not in applied]
            if pending:
                log.info("%s: applying migrations %s", self.url,
                         ", ".join(step.name for step in pending))
            for step in pending:
                for statement in step.sql("postgresql"):
                    conn.execute(statement)
                conn.execute("INSERT INTO _migrations (name, migration_set, applied_at) "
                             "VALUES (%s, %s, %s)",
                             (step.name, MIGRATION_SET, str(dt.datetime.now(dt.UTC))))

    def _load_qualities(self, conn: psycopg.Connection[Any]) -> None:
        self._quality_ids = {str(w): int(i) for i, w in
                             conn.execute("SELECT id, word FROM quality").fetchall()}

    def relay_lease(self, upstream: str) -> bool:
        """A session-level advisory lock (:data:`PG_LOCK_RELAY_LEASE`, CRC-32 of the name) on
        this storage's connection: released when the connection ends, so a new connection
        after a lost one must win it again (asked again, this finds out)."""
        key = (PG_LOCK_RELAY_LEASE, zlib.crc32(upstream.encode()) & 0x7FFF_FFFF)
        rows = self._rows(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_backend_pid() AND classid = ? AND objid = ? AND objsubid = 2 "
            "AND granted) THEN true ELSE pg_try_advisory_lock(?, ?) END",   # CASE: in order
            (*key, *key))
        return bool(rows[0][0])

    def stored_chain(self, keys: Sequence[tuple[str, str, int]],
                     gateways: Sequence[tuple[str, str]],
                     ) -> tuple[dict[tuple[str, str, int], bytes],
                                dict[tuple[str, str], tuple[int, bytes]]]:
        """One round trip for a group's chain questions (``collector._storage``)."""
        rows = self._rows(_STORED_CHAIN, (
            [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
            [g[0] for g in gateways], [g[1] for g in gateways]))
        hashes: dict[tuple[str, str, int], bytes] = {}
        lasts: dict[tuple[str, str], tuple[int, bytes]] = {}
        for last, unit, gateway, seq, digest in rows:
            if last:
                lasts[unit, gateway] = (int(seq), bytes(digest))
            else:
                hashes[unit, gateway, int(seq)] = bytes(digest)
        return hashes, lasts

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- plumbing ----------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            conn = self._connection()
            try:
                return conn.execute(_pg(sql), args).fetchall()
            except psycopg.Error as exc:
                raise _translate(self.url, "querying", exc) from exc

    def _write(self, action: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run ``work`` in one transaction, again after a deadlock, a serialization failure
        or a lost race (:class:`_Raced`); psycopg errors become StorageErrors."""
        with self._lock:
            for attempt in range(1, _RETRIES + 1):
                conn = self._connection()
                try:
                    with conn.transaction():
                        return work(conn)
                except (_Raced, errors.DeadlockDetected, errors.SerializationFailure) as exc:
                    if attempt == _RETRIES:
                        raise StorageUnavailableError(
                            self.url, f"{action} failed {attempt} times: {exc}") from exc
                    log.info("%s: %s: %s; running it again", self.url, action, exc)
                    time.sleep(random.uniform(0, 0.01 * attempt))
                except psycopg.Error as exc:
                    raise _translate(self.url, action, exc) from exc
            raise AssertionError("unreachable")

    def _intern(self, conn: psycopg.Connection[Any], batches: Sequence[VerifiedBatch]) -> None:
        """Make sure every unit/gateway, point and quality of ``batches`` has a cached id
        (inserting new ones in their own committed statements)."""
        gateways = sorted({(vb.unit, vb.gateway) for vb in batches} - self._gateway_ids.keys())
        codes, qualities = reading_codes(batches)
        points = sorted(codes - self._point_ids.keys())
        words = sorted(qualities - self._quality_ids.keys())
        if gateways:
            self._intern_gateways(conn, gateways)
        if points:
            conn.execute("INSERT INTO point (code) SELECT unnest(%s::text[]) "
                         "ON CONFLICT (code) DO NOTHING", (points,))
            self._point_ids.update(conn.execute(
                "SELECT code, id FROM point WHERE code = ANY(%s)", (points,)).fetchall())
        if words:
            conn.execute("INSERT INTO quality (word) SELECT unnest(%s::text[]) "
                         "ON CONFLICT (word) DO NOTHING", (words,))
            self._quality_ids.update(conn.execute(
                "SELECT word, id FROM quality WHERE word = ANY(%s)", (words,)).fetchall())

    def _intern_gateways(self, conn: psycopg.Connection[Any],
                         keys: Sequence[tuple[str, str]]) -> None:
        units, names = [k[0] for k in keys], [k[1] for k in keys]
        conn.execute("INSERT INTO gateway (unit, gateway) SELECT * FROM "
                     "unnest(%s::text[], %s::text[]) ON CONFLICT (unit, gateway) DO NOTHING",
                     (units, names))
        rows = conn.execute("SELECT g.unit, g.gateway, g.id FROM gateway g JOIN "
                            "unnest(%s::text[], %s::text[]) AS k(unit, gateway) "
                            "ON g.unit = k.unit AND g.gateway = k.gateway",
                            (units, names)).fetchall()
        self._gateway_ids.update({(u, g): int(i) for u, g, i in rows})

    def _committed_gateway_id(self, unit: str, gateway: str) -> int:
        """The gateway's id, interning it outside any transaction (so a cached id always
        names a committed row)."""
        if (unit, gateway) not in self._gateway_ids:
            try:
                self._intern_gateways(self._connection(), [(unit, gateway)])
            except psycopg.Error as exc:
                raise _translate(self.url, "interning a gateway", exc) from exc
        return self._gateway_ids[unit, gateway]

    # -- writes ------------------------------------------------------------------------------
    def store(self, batches: Sequence[VerifiedBatch],
              quarantined: Sequence[Quarantined] = ()) -> int:
        if not batches and not quarantined:
            return 0
        with self._lock:
            try:
                self._intern(self._connection(), batches)
            except psycopg.Error as exc:
                raise _translate(self.url, "interning codes", exc) from exc
            return self._write("storing batches",
                               lambda conn: self._store(conn, batches, quarantined))

    def _store(self, conn: psycopg.Connection[Any], batches: Sequence[VerifiedBatch],
               quarantined: Sequence[Quarantined]) -> int:
        gids = self._gateway_ids
        stored: dict[tuple[str, str, int], bytes] = {}
        if batches:
            names = {gids[vb.unit, vb.gateway]: (vb.unit, vb.gateway) for vb in batches}
            rows = conn.execute(
                "SELECT b.gateway_id, b.seq, b.hash FROM batch b JOIN "
                "unnest(%s::int4[], %s::int8[]) AS k(gateway_id, seq) "
                "ON b.gateway_id = k.gateway_id AND b.seq = k.seq",
                ([gids[vb.unit, vb.gateway] for vb in batches],
                 [vb.seq for vb in batches])).fetchall()
            for gid, seq, digest in rows:
                stored[(*names[gid], int(seq))] = bytes(digest)
        plan = plan_store(batches, stored)

        added: dict[int, int] = {}
        rows_in = reading_rows(plan.new, gids, self._point_ids, self._quality_ids)
        if rows_in:
            pack = _COPY_ROW.pack
            data = _COPY_HEADER + b"".join([
                pack(6, 4, gid, 8, ts, 4, pid, 2, period, 8, value, 2, quality)
                for gid, ts, pid, period, value, quality in rows_in]) + _COPY_TRAILER
            fresh = all(vb.batch.kind == "data" for vb in plan.new)
            if not (fresh and self._copy_direct(conn, data)):
                with conn.cursor() as cur:
                    with cur.copy(_COPY_STAGING) as copy:
                        copy.write(data)
                    cur.execute(_MOVE_STAGING)
                    added = {int(g): int(n) for g, n in cur.fetchall()}
            else:
                added = Counter(row[0] for row in rows_in)

        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", PG_LOCK_RELAY)
        if plan.new:
            self._insert_batches(conn, plan.new)
            deltas: dict[int, InventoryDelta] = defaultdict(InventoryDelta)
            for vb in plan.new:
                deltas[gids[vb.unit, vb.gateway]].add(vb)
            order = sorted(deltas)
            conn.execute(
                "UPDATE gateway g SET"
                " last_seen = GREATEST(g.last_seen, d.seen),"
                " first_seq = LEAST(g.first_seq, d.first),"
                " last_seq = GREATEST(g.last_seq, d.last),"
                " batches = g.batches + d.batches,"
                " readings = g.readings + d.readings"
                " FROM unnest(%s::int4[], %s::int8[], %s::int8[], %s::int8[], %s::int8[],"
                " %s::int8[]) AS d(id, seen, first, last, batches, readings)"
                " WHERE g.id = d.id",
                (order, [deltas[g].seen for g in order], [deltas[g].first_seq for g in order],
                 [deltas[g].last_seq for g in order], [deltas[g].batches for g in order],
                 [added.get(g, 0) for g in order]))
        self._quarantine(conn, [*plan.conflicts, *quarantined])
        if plan.duplicates or plan.conflicts:
            log.debug("%s: %d duplicate and %d conflicting batches", self.url,
                      plan.duplicates, len(plan.conflicts))
        return sum(added.values())

    def _copy_direct(self, conn: psycopg.Connection[Any], data: bytes) -> bool:
        """COPY ``data`` straight into ``reading``, in a savepoint; False (and nothing
        written) when one of its keys is stored already (or repeated in ``data``).

        All or nothing: the primary key refuses a stored key and the whole COPY is rolled
        back to the savepoint, so the caller then takes the staging path, whose ON CONFLICT
        skips what is stored. A key another writer has inserted but not committed makes the
        COPY wait for that commit (PostgreSQL's unique check), then fail or go on: stored
        once either way. The rows are in key order, so two writers wait in one order."""
        try:
            with conn.transaction(), conn.cursor() as cur, cur.copy(_COPY_READING) as copy:
                copy.write(data)
        except errors.UniqueViolation:
            self._direct_misses += 1
            log.debug("%s: readings already stored: loading through the staging table",
                      self.url)
            return False
        return True

    def _insert_batches(self, conn: psycopg.Connection[Any],
                        new: Sequence[VerifiedBatch]) -> None:
        gids = self._gateway_ids
        columns = list(zip(*(batch_row(vb, gids[vb.unit, vb.gateway]) for vb in new),
                           strict=True))
        inserted = conn.execute(_INSERT_BATCHES, [list(c) for c in columns]).fetchall()
        if len(inserted) != len(new):
            raise _Raced(f"{len(new) - len(inserted)} of {len(new)} batches were stored "
                         "by another writer meanwhile")

    @staticmethod
    def _quarantine(conn: psycopg.Connection[Any], records: Sequence[Quarantined]) -> None:
        if not records:
            return
        with conn.cursor() as cur:
            cur.executemany(_INSERT_QUARANTINE, [quarantine_row(q) for q in records])
            per_gateway = Counter((q.unit, q.gateway) for q in records
                                  if q.unit is not None and q.gateway is not None)
            if per_gateway:
                cur.executemany("UPDATE gateway SET quarantined = quarantined + %s "
                                "WHERE unit = %s AND gateway = %s",
                                [(n, u, g) for (u, g), n in sorted(per_gateway.items())])

    def record_status(self, status: GatewayStatus) -> None:
        check_status(status)
        with self._lock:
            gid = self._committed_gateway_id(status.unit, status.gateway)
            self._write("recording a status", lambda conn: conn.execute(
                "UPDATE gateway SET status = %(status)s, status_at = %(at)s,"
                " version = coalesce(%(version)s, version),"
                " last_seen = GREATEST(last_seen, %(at)s)"
                " WHERE id = %(id)s AND (status_at IS NULL OR status_at <= %(at)s)",
                {"id": gid, "status": status.status, "at": status.received,
                 "version": status.version}))

    def pin_certificate(self, unit: str, gateway: str, pem: str, *,
                        replace: bool = False) -> None:
        with self._lock:
            gid = self._committed_gateway_id(unit, gateway)
            self._write("pinning a certificate", lambda conn: conn.execute(
                _PIN_REPLACE if replace else _PIN_FIRST, (gid, pem, now_ms())))

    def relay_ack(self, upstream: str, row_id: int) -> None:
        self._write("recording a relay acknowledgement", lambda conn: conn.execute(
            "INSERT INTO relay_cursor (upstream, after_id, updated) VALUES (%s, %s, %s) "
            "ON CONFLICT (upstream) DO UPDATE SET updated = excluded.updated, "
            "after_id = GREATEST(relay_cursor.after_id, excluded.after_id)",
            (upstream, row_id, now_ms())))

    # -- reads -------------------------------------------------------------------------------
    def readings(self, *, unit: str | None = None, gateway: str | None = None,
                 point: str | None = None, period: Period | str | None = None,
                 since_ms: int | None = None, until_ms: int | None = None,
                 limit: int | None = None) -> Iterator[StoredReading]:
        sql, args = readings_query(unit=unit, gateway=gateway, point=point, period=period,
                                   since_ms=since_ms, until_ms=until_ms, limit=limit)
        if self._closed:
            raise StorageError(self.url, "storage is closed")
        return self._stream(_pg(sql), args)

    def _stream(self, sql: str, args: list[Any]) -> Iterator[StoredReading]:
        conn = self._open()
        try:
            with conn.transaction(), conn.cursor(name="kemon_readings") as cur:
                cur.itersize = _ITERSIZE
                cur.execute(sql, args)
                for unit, gateway, point, period, ts, value, quality in cur:
                    yield StoredReading(unit, gateway, point, PERIOD_NAMES[period], int(ts),
                                        float(value), quality)
        except psycopg.Error as exc:
            raise _translate(self.url, "querying readings", exc) from exc
        finally:
            conn.close()
