"""The collector's embedded back end: one SQLite file (a pilot, a small province).

Durability: WAL with ``synchronous=FULL``. The ingest acknowledges a message to the broker only
after :meth:`SqliteStorage.store` returned, so the commit must survive a power loss, not just a
crash: ``FULL`` fsyncs the WAL at every commit (``NORMAL`` would only sync at checkpoints).

Several writers (threads with their own SqliteStorage, or two collector processes sharing the
file in a small setup): every write transaction starts with ``BEGIN IMMEDIATE``, which takes
SQLite's single write lock up front, and ``busy_timeout`` makes a second writer wait for it
instead of failing. (A deferred transaction that reads first and then writes can fail with
SQLITE_BUSY at the upgrade no matter the timeout; an immediate one cannot.) Inside the lock,
store() reads the stored hashes and writes, so deciding "already stored" and storing are one
atomic step. Row ids of ``batch`` therefore grow in commit order — the relay's order.

Opening runs the pending migrations (``collector._schema``) inside ``BEGIN IMMEDIATE`` too, so
processes opening a new file together apply each step once.

Speed (store() of 10,000 readings): one prepared ``INSERT … ON CONFLICT DO NOTHING`` run by
``executemany`` per gateway over rows sorted in key order, into the ``WITHOUT ROWID`` reading
table; unit/gateway, point codes and quality words are interned to integer ids cached in
memory (ids never change once committed).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import sqlite_utils

from protocol import Period

from ._records import GatewayStatus, Quarantined, VerifiedBatch
from ._schema import MIGRATIONS, PERIOD_NAMES
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

__all__ = ["SqliteStorage"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_BUSY_MS = 30_000          # a second writer waits this long for the write lock
_CACHE_KIB = 16_384        # page cache per connection (cache_size = -KiB)
_FETCH = 2000

# SQLite primary result codes (https://www.sqlite.org/rescode.html)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN = 5, 6, 10, 13, 14
_UNAVAILABLE = {_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_IOERR, _SQLITE_FULL, _SQLITE_CANTOPEN}

_INSERT_READING = ("INSERT INTO reading (gateway_id, ts, point_id, period, value, quality) "
                   "VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (gateway_id, ts, point_id, period) DO NOTHING")
_INSERT_BATCH = ("INSERT INTO batch (gateway_id, seq, hash, prev, kind, chain, created, received,"
                 " count, via, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_QUARANTINE = ("INSERT INTO quarantine (received, kind, reason, topic, unit, gateway, seq,"
                      " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_PIN = "INSERT INTO certificate_pin (gateway_id, pem, pinned) VALUES (?, ?, ?) "
_PIN_FIRST = _PIN + "ON CONFLICT (gateway_id) DO NOTHING"
_PIN_REPLACE = _PIN + ("ON CONFLICT (gateway_id) DO UPDATE SET pem = excluded.pem,"
                       " pinned = excluded.pinned")
_UPDATE_INVENTORY = (
    "UPDATE gateway SET"
    " last_seen = max(coalesce(last_seen, :seen), :seen),"
    " first_seq = min(coalesce(first_seq, :first), :first),"
    " last_seq = max(coalesce(last_seq, :last), :last),"
    " batches = batches + :batches,"
    " readings = readings + :readings"
    " WHERE id = :id")
_COUNT_QUARANTINED = ("UPDATE gateway SET quarantined = quarantined + ? "
                      "WHERE unit = ? AND gateway = ?")
_UPDATE_STATUS = (
    "UPDATE gateway SET status = :status, status_at = :at,"
    " version = coalesce(:version, version),"
    " last_seen = max(coalesce(last_seen, :at), :at)"
    " WHERE id = :id AND (status_at IS NULL OR status_at <= :at)")


def _translate(url: str, action: str, exc: sqlite3.Error) -> StorageError:
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    cls = StorageUnavailableError if code in _UNAVAILABLE else StorageError
    return cls(url, f"{action} failed: {detail}")


class _Codes:
    """Interned ids (unit/gateway, point code, quality word) known to be committed."""

    def __init__(self) -> None:
        self.gateways: dict[tuple[str, str], int] = {}
        self.points: dict[str, int] = {}
        self.qualities: dict[str, int] = {}

    def merge(self, other: _Codes) -> None:
        self.gateways.update(other.gateways)
        self.points.update(other.points)
        self.qualities.update(other.qualities)


class SqliteStorage(SqlStorage):
    """The collector database in one SQLite file (``collector._storage`` for the methods)."""

    def __init__(self, path: Path | str, *, url: str | None = None) -> None:
        self.path = Path(path)
        super().__init__(url or f"sqlite:///{self.path.resolve()}")
        self._codes = _Codes()
        self._conn: sqlite3.Connection | None = None
        self._leases: dict[str, int] = {}      # upstream -> file descriptor holding its lock
        try:
            self._conn = self._connect()
        except sqlite3.Error as exc:
            self._abandon()
            raise _translate(self.url, "opening", exc) from exc
        except BaseException:
            self._abandon()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=_BUSY_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(self.url, f"cannot use WAL journal mode (got {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            db = sqlite_utils.Database(conn, execute_plugins=False)
            conn.execute("BEGIN IMMEDIATE")
            try:
                pending = [m.name for m in MIGRATIONS.pending(db)]
                if pending:
                    log.info("%s: applying migrations %s", self.url, ", ".join(pending))
                    MIGRATIONS.apply(db)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        return conn

    def _abandon(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(self.url, "storage is closed")
        return self._conn

    def relay_lease(self, upstream: str) -> bool:
        """An exclusive ``flock`` on ``<database>.relay-<upstream>.lock`` beside the file: the
        kernel drops it when the process ends, however it ends."""
        with self._lock:
            if upstream in self._leases:
                return True
            self._db()
            path = self.path.with_name(f"{self.path.name}.relay-{upstream}.lock")
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise StorageError(self.url, f"cannot open the relay lock {path}: "
                                   f"{exc.strerror}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            self._leases[upstream] = fd
            return True

    def close(self) -> None:
        with self._lock:
            for fd in self._leases.values():
                os.close(fd)
            self._leases.clear()
            if self._conn is None:
                return
            try:
                self._conn.execute("PRAGMA optimize")
            except sqlite3.Error as exc:
                log.warning("%s: optimize on close failed: %s", self.url, exc)
            finally:
                self._conn.close()
                self._conn = None

    # -- plumbing ----------------------------------------------------------------------------
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise _translate(self.url, "querying", exc) from exc

    def _write(self, action: str, work: Callable[[sqlite3.Connection, _Codes], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction; ids it interned are cached
        once the transaction committed."""
        with self._lock:
            conn = self._db()
            fresh = _Codes()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn, fresh)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _translate(self.url, action, exc) from exc
            self._codes.merge(fresh)
            return result

    def _intern(self, conn: sqlite3.Connection, fresh: _Codes,
                batches: Sequence[VerifiedBatch]) -> _Codes:
        """Ids for every unit/gateway, point and quality of ``batches`` (inserting new ones
        inside the caller's transaction; ``fresh`` collects them)."""
        known = self._codes
        for vb in batches:
            key = (vb.unit, vb.gateway)
            if key not in known.gateways and key not in fresh.gateways:
                fresh.gateways[key] = self._gateway_id(conn, *key)
        points, words = reading_codes(batches)
        for code in sorted(points - known.points.keys()):
            conn.execute("INSERT INTO point (code) VALUES (?) ON CONFLICT (code) DO NOTHING",
                         (code,))
            fresh.points[code] = conn.execute("SELECT id FROM point WHERE code = ?",
                                              (code,)).fetchone()[0]
        for word in sorted(words - known.qualities.keys()):
            conn.execute("INSERT INTO quality (word) VALUES (?) ON CONFLICT (word) DO NOTHING",
                         (word,))
            fresh.qualities[word] = conn.execute("SELECT id FROM quality WHERE word = ?",
                                                 (word,)).fetchone()[0]
        if not (fresh.gateways or fresh.points or fresh.qualities):
            return known
        merged = _Codes()
        merged.merge(known)
        merged.merge(fresh)
        return merged

    @staticmethod
    def _gateway_id(conn: sqlite3.Connection, unit: str, gateway: str) -> int:
        conn.execute("INSERT INTO gateway (unit, gateway) VALUES (?, ?) "
                     "ON CONFLICT (unit, gateway) DO NOTHING", (unit, gateway))
        gid: int = conn.execute("SELECT id FROM gateway WHERE unit = ? AND gateway = ?",
                                (unit, gateway)).fetchone()[0]
        return gid

    # -- writes ------------------------------------------------------------------------------
    def store(self, batches: Sequence[VerifiedBatch],
              quarantined: Sequence[Quarantined] = ()) -> int:
        def work(conn: sqlite3.Connection, fresh: _Codes) -> int:
            codes = self._intern(conn, fresh, batches)
            stored: dict[tuple[str, str, int], bytes] = {}
            for vb in batches:
                row = conn.execute("SELECT hash FROM batch WHERE gateway_id = ? AND seq = ?",
                                   (codes.gateways[vb.unit, vb.gateway], vb.seq)).fetchone()
                if row is not None:
                    stored[vb.unit, vb.gateway, vb.seq] = row[0]
            plan = plan_store(batches, stored)
            by_gateway: dict[int, list[VerifiedBatch]] = defaultdict(list)
            for vb in plan.new:
                by_gateway[codes.gateways[vb.unit, vb.gateway]].append(vb)
            total = 0
            for gid in sorted(by_gateway):
                group = by_gateway[gid]
                rows = reading_rows(group, codes.gateways, codes.points, codes.qualities)
                added = conn.executemany(_INSERT_READING, rows).rowcount
                conn.executemany(_INSERT_BATCH, [batch_row(vb, gid) for vb in group])
                delta = InventoryDelta(readings=added)
                for vb in group:
                    delta.add(vb)
                conn.execute(_UPDATE_INVENTORY, {
                    "id": gid, "seen": delta.seen, "first": delta.first_seq,
                    "last": delta.last_seq, "batches": delta.batches,
                    "readings": delta.readings})
                total += added
            self._quarantine(conn, [*plan.conflicts, *quarantined])
            if plan.duplicates or plan.conflicts:
                log.debug("%s: %d duplicate and %d conflicting batches", self.url,
                          plan.duplicates, len(plan.conflicts))
            return total

        if not batches and not quarantined:
            return 0
        return self._write("storing batches", work)

    @staticmethod
    def _quarantine(conn: sqlite3.Connection, records: Sequence[Quarantined]) -> None:
        if not records:
            return
        conn.executemany(_INSERT_QUARANTINE, [quarantine_row(q) for q in records])
        per_gateway = Counter((q.unit, q.gateway) for q in records
                              if q.unit is not None and q.gateway is not None)
        conn.executemany(_COUNT_QUARANTINED,
                         [(n, unit, gateway) for (unit, gateway), n in per_gateway.items()])

    def record_status(self, status: GatewayStatus) -> None:
        def work(conn: sqlite3.Connection, fresh: _Codes) -> None:
            gid = self._gateway_id(conn, status.unit, status.gateway)
            fresh.gateways[status.unit, status.gateway] = gid
            conn.execute(_UPDATE_STATUS, {"id": gid, "status": status.status,
                                          "at": status.received, "version": status.version})

        check_status(status)
        self._write("recording a status", work)

    def pin_certificate(self, unit: str, gateway: str, pem: str, *,
                        replace: bool = False) -> None:
        def work(conn: sqlite3.Connection, fresh: _Codes) -> None:
            gid = self._gateway_id(conn, unit, gateway)
            fresh.gateways[unit, gateway] = gid
            conn.execute(_PIN_REPLACE if replace else _PIN_FIRST, (gid, pem, now_ms()))

        self._write("pinning a certificate", work)

    def relay_ack(self, upstream: str, row_id: int) -> None:
        self._write("recording a relay acknowledgement", lambda conn, _: conn.execute(
            "INSERT INTO relay_cursor (upstream, after_id, updated) VALUES (?, ?, ?) "
            "ON CONFLICT (upstream) DO UPDATE SET "
            "after_id = max(after_id, excluded.after_id), updated = excluded.updated",
            (upstream, row_id, now_ms())))

    # -- reads -------------------------------------------------------------------------------
    def readings(self, *, unit: str | None = None, gateway: str | None = None,
                 point: str | None = None, period: Period | str | None = None,
                 since_ms: int | None = None, until_ms: int | None = None,
                 limit: int | None = None) -> Iterator[StoredReading]:
        sql, args = readings_query(unit=unit, gateway=gateway, point=point, period=period,
                                   since_ms=since_ms, until_ms=until_ms, limit=limit)
        self._db()       # closed storage: fail now, not at the first next()
        return self._stream(sql, args)

    def _stream(self, sql: str, args: list[Any]) -> Iterator[StoredReading]:
        try:
            conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode=ro",
                                   uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _translate(self.url, "opening for reading", exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            cur = conn.execute(sql, args)
            while rows := cur.fetchmany(_FETCH):
                for unit, gateway, point, period, ts, value, quality in rows:
                    yield StoredReading(unit, gateway, point, PERIOD_NAMES[period], ts,
                                        value, quality)
        except sqlite3.Error as exc:
            raise _translate(self.url, "querying readings", exc) from exc
        finally:
            conn.close()
