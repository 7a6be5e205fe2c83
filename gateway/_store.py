"""The gateway's durable local store: readings and small state in one SQLite file.

Hot path: :meth:`Store.append_cycle` writes one poll cycle — every reading of the cycle and the
state that goes with it (the consumption tracker's, meter statistics) — in ONE transaction with
one prepared ``executemany``. Either the whole cycle is on disk or none of it is.

Durability: WAL journal with ``synchronous=FULL``. In WAL mode ``NORMAL`` only syncs at
checkpoints, so an application crash loses nothing but a *power loss* can lose the last
committed transactions; ``FULL`` fsyncs the WAL at every commit, so a cycle that
``append_cycle`` returned from survives power loss. It costs one fsync per cycle, i.e. one per
poll interval (60 s): nothing on the gateway, and the benchmark shows the throughput that is left.

Readers (``kemon gateway readings`` while the gateway runs) open with
:meth:`Store.open_readonly`: WAL lets them read a consistent snapshot beside the writer;
``busy_timeout`` rides out the short moments when they must wait (e.g. a checkpoint restart).

Size is bounded by :meth:`Store.prune` — by age (``retention_days``) and by
``disk_budget_bytes``, oldest first, never at or past ``protected_from_id`` (the uplink's
"not yet delivered" mark). ``auto_vacuum=INCREMENTAL`` lets the file shrink after eviction.

Exceptions (each has a one-line message naming the file)::

    StoreError                 base: cannot open, not a Kemon store, closed, other SQLite error
    ├── StoreFullError         disk (or the page limit) full: the cycle was not stored
    ├── StoreReadOnlyError     the file or its directory is read-only (or a read-only Store)
    ├── StoreBusyError         another process held a lock past busy_timeout
    └── StoreCorruptError      the file is damaged or not a database
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import sqlite_utils

from protocol import Period, Reading

from ._model import MeterConfig
from ._store_schema import MIGRATIONS, PERIOD_CODES

__all__ = [
    "PruneResult",
    "Store",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreReadOnlyError",
    "store_file_bytes",
]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
_PAGE_SIZE = 4096              # SQLite default; measured: 8192 gave no gain (docs/store.md)
_CACHE_KIB = 8192              # page cache per connection (cache_size = -KiB)
_WAL_AUTOCHECKPOINT = 2000     # pages (8 MiB of WAL) between automatic checkpoints
_WAL_LIMIT = 32 * 1024 * 1024  # journal_size_limit: WAL truncated to this after a checkpoint
_BUSY_MS = 5000
_QUARTER_MS = 900_000            # the 15-minute grid (CST is UTC+8: the same grid in UTC)
_CHUNK = 20_000                # rows deleted per prune transaction
_VACUUM_STEP = 2048            # pages released per incremental_vacuum step
_LOW_WATER = 0.9               # budget eviction stops at this share of the budget
_FETCH = 1000

_INSERT = ("INSERT OR IGNORE INTO reading (point_id, period, ts, value, quality) "
           "VALUES (?, ?, ?, ?, ?)")
_PUT_KV = ("INSERT INTO kv (key, value) VALUES (?, ?) "
           "ON CONFLICT(key) DO UPDATE SET value = excluded.value")
_INTERN = {
    "point": ("SELECT id FROM point WHERE code = ?", "INSERT INTO point (code) VALUES (?)"),
    "quality": ("SELECT id FROM quality WHERE word = ?", "INSERT INTO quality (word) VALUES (?)"),
}
_PERIODS: dict[int, Period] = {code: Period(name) for name, code in PERIOD_CODES.items()}

# SQLite primary result codes (https://www.sqlite.org/rescode.html)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


def store_file_bytes(path: Path) -> int:
    """Bytes a store at ``path`` takes on disk: the database file plus its WAL and
    shared-memory index (0 when there is none)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            total += os.stat(f"{path}{suffix}").st_size
    return total


class StoreError(Exception):
    """A store operation failed; ``path`` names the store."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        super().__init__(f"store {self.path}: {message}")


class StoreFullError(StoreError):
    """No room left (disk full or the page limit): what was being written was not stored."""


class StoreReadOnlyError(StoreError):
    """The store cannot be written: read-only file system, file or handle."""


class StoreBusyError(StoreError):
    """Another connection held a lock longer than the busy timeout."""


class StoreCorruptError(StoreError):
    """The file is damaged or is not an SQLite database."""


def _read_only_fs(path: Path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (so nobody can write it)."""
    try:
        return bool(os.statvfs(path.parent).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _not_writable(path: Path) -> bool:
    """Whether we cannot write ``path``'s directory (read-only mount or permissions)."""
    return _read_only_fs(path) or not os.access(path.parent, os.W_OK)


def _translate(path: Path, action: str, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if code in (_SQLITE_CANTOPEN, _SQLITE_IOERR, _SQLITE_READONLY) and _not_writable(path):
        return StoreReadOnlyError(path, f"{action} failed: read-only file system ({detail})")
    cls: type[StoreError] = {
        _SQLITE_FULL: StoreFullError,
        _SQLITE_READONLY: StoreReadOnlyError,
        _SQLITE_BUSY: StoreBusyError,
        _SQLITE_LOCKED: StoreBusyError,
        _SQLITE_CORRUPT: StoreCorruptError,
        _SQLITE_NOTADB: StoreCorruptError,
    }.get(code, StoreError)
    return cls(path, f"{action} failed: {detail}")


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`Store.prune` did. ``over_budget``: still above the budget because every
    remaining row is protected (the uplink must decide; nothing was dropped silently)."""

    deleted_by_age: int
    deleted_by_budget: int
    bytes_before: int
    bytes_after: int
    over_budget: bool


class Store:
    """Readings and small persistent state of one gateway, in one SQLite file.

    ``Store(path)`` opens the file, creating and migrating it as needed; use it as a context
    manager or call :meth:`close`. One Store per process writes; use it from one thread at a
    time. ``trace`` (optional) receives every SQL statement run, for tests and debugging.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        retention_days: int = 200,
        disk_budget_bytes: int = 2048 * 1024 * 1024,
        full_resolution_days: int | None = None,
        trace: Callable[[str], None] | None = None,
        _readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.retention_days = retention_days
        self.disk_budget_bytes = disk_budget_bytes
        self.full_resolution_days = full_resolution_days
        self.readonly = _readonly
        self._point_ids: dict[str, int] = {}
        self._point_codes: dict[int, str] = {}
        self._quality_ids: dict[str, int] = {}
        self._quality_words: dict[int, str] = {}
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = self._connect(trace)
            self._load_codes()
        except sqlite3.Error as exc:
            self._abandon()
            raise _translate(self.path, "opening", exc) from exc
        except StoreError:
            self._abandon()
            raise

    @classmethod
    def open_readonly(cls, path: Path | str) -> Store:
        """Open an existing store for reading only, beside a running writer."""
        return cls(path, _readonly=True)

    # -- opening -----------------------------------------------------------------------------
    def _connect(self, trace: Callable[[str], None] | None) -> sqlite3.Connection:
        if self.readonly:
            if not self.path.exists():
                raise StoreError(self.path, "no such file")
            uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
            if _read_only_fs(self.path):
                # nobody can write here, and a WAL reader could not create the -shm index
                uri += "&immutable=1"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self._create()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if trace is not None:
            conn.set_trace_callback(trace)
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
        if self.readonly:
            conn.execute("PRAGMA query_only = 1")
            self._check_schema(conn)
            return conn
        fresh = conn.execute("PRAGMA page_count").fetchone()[0] == 0
        if fresh:   # both only take effect before the first table is created
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(self.path, f"cannot use WAL journal mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT}")
        conn.execute(f"PRAGMA journal_size_limit = {_WAL_LIMIT}")
        db = sqlite_utils.Database(conn, execute_plugins=False)
        pending = [m.name for m in MIGRATIONS.pending(db)]
        if pending:
            log.info("store %s: applying migrations %s", self.path, ", ".join(pending))
            MIGRATIONS.apply(db)
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
            log.warning("store %s: auto_vacuum is not INCREMENTAL; the file will not shrink",
                        self.path)
        return conn

    def _create(self) -> None:
        """Build a new store beside its final name and rename it into place, so that a reader
        (``kemon gateway readings`` while the gateway starts) never meets a half-made file."""
        tmp = self.path.with_name(self.path.name + ".creating")
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{tmp}{suffix}")
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            MIGRATIONS.apply(sqlite_utils.Database(conn, execute_plugins=False))
        finally:
            conn.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        db = sqlite_utils.Database(conn, execute_plugins=False, recursive_triggers=False)
        if not db["reading"].exists():
            raise StoreError(self.path, "not a Kemon store (no reading table)")
        pending = [m.name for m in MIGRATIONS.pending(db)]
        if pending:
            raise StoreError(self.path, f"schema is older than this program ({pending[0]} not "
                             "applied): start the gateway once to migrate it")

    def _load_codes(self) -> None:
        conn = self._db()
        self._point_ids = dict(conn.execute("SELECT code, id FROM point"))
        self._point_codes = {i: c for c, i in self._point_ids.items()}
        self._quality_ids = dict(conn.execute("SELECT word, id FROM quality"))
        self._quality_words = {i: w for w, i in self._quality_ids.items()}

    def _abandon(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(self.path, "store is closed")
        return self._conn

    def close(self) -> None:
        """Close the store (a second close does nothing)."""
        if self._conn is None:
            return
        try:
            if not self.readonly:
                self._conn.execute("PRAGMA optimize")
        except sqlite3.Error as exc:
            log.warning("store %s: optimize on close failed: %s", self.path, exc)
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- points ------------------------------------------------------------------------------
    def register_points(self, meters: Iterable[MeterConfig]) -> None:
        """Record every point of ``meters`` (code, unit, energy, meter) in one transaction."""
        rows = [(p.code, p.unit, p.energy, m.name) for m in meters for p in m.points]
        self._write("registering points", lambda c: c.executemany(
            "INSERT INTO point (code, unit, energy, meter) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(code) DO UPDATE SET unit = excluded.unit, energy = excluded.energy, "
            "meter = excluded.meter", rows))
        self._load_codes()

    def points(self) -> list[dict[str, Any]]:
        """The point table: ``[{"code", "unit", "energy", "meter"}, …]`` by code."""
        cur = self._db().execute("SELECT code, unit, energy, meter FROM point ORDER BY code")
        return [dict(zip(("code", "unit", "energy", "meter"), row, strict=True)) for row in cur]

    @staticmethod
    def _intern(conn: sqlite3.Connection, table: str, value: str, new: dict[str, int]) -> int:
        """The id of ``value`` in a code table, inserting it (inside the caller's transaction)."""
        if value in new:
            return new[value]
        select, insert = _INTERN[table]
        found = conn.execute(select, (value,)).fetchone()
        if found is None:
            found = (conn.execute(insert, (value,)).lastrowid,)
        new[value] = int(found[0])
        return new[value]

    # -- writing -----------------------------------------------------------------------------
    def write(self, action: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``work(conn)`` in one IMMEDIATE transaction (for the outbox and other tables
        kept beside the readings); SQLite errors become StoreError naming ``action``."""
        return self._write(action, work)

    def read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """Rows of a read-only query; SQLite errors become StoreError."""
        try:
            return self._db().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _translate(self.path, "reading", exc) from exc

    def _write(self, action: str, work: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _translate(self.path, action, exc) from exc
        return result

    def append_cycle(self, readings: Iterable[Reading],
                     state: Mapping[str, Any] | None = None) -> int:
        """Store one poll cycle in ONE transaction: ``readings`` and ``state`` (key → JSON-able
        value, e.g. ``{"consumption": tracker.state()}``), all or nothing.

        A reading whose (point, period, ts) is already stored is ignored (the first one stays).
        Returns the number of readings stored. Raises :class:`StoreFullError` when there is no
        room (nothing of the cycle is stored; earlier cycles are intact).
        """
        batch = readings if isinstance(readings, Sequence) else list(readings)
        kv = [(key, json.dumps(value, separators=(",", ":"), allow_nan=False))
              for key, value in (state or {}).items()]
        pids, qids = self._point_ids, self._quality_ids
        try:   # the hot path: every code already interned
            rows = [(pids[r.point], PERIOD_CODES[r.period], r.ts, r.value, qids[r.quality])
                    for r in batch]
            new_points: dict[str, int] = {}
            new_qualities: dict[str, int] = {}
        except KeyError:
            rows = []
            new_points, new_qualities = {}, {}

        def work(conn: sqlite3.Connection) -> int:
            nonlocal rows
            if not rows and batch:   # some code to intern first, inside this transaction
                rows = [(pids.get(r.point) or self._intern(conn, "point", r.point, new_points),
                         PERIOD_CODES[r.period], r.ts, r.value,
                         qids[r.quality] if r.quality in qids else self._intern(
                             conn, "quality", str(r.quality), new_qualities))
                        for r in batch]
            stored = conn.executemany(_INSERT, rows).rowcount
            if kv:
                conn.executemany(_PUT_KV, kv)
            return max(stored, 0)

        stored = int(self._write("appending a cycle", work))
        if new_points or new_qualities:   # only once committed
            self._point_ids.update(new_points)
            self._point_codes.update({i: c for c, i in new_points.items()})
            self._quality_ids.update(new_qualities)
            self._quality_words.update({i: w for w, i in new_qualities.items()})
        return stored

    def put_state(self, key: str, value: Any) -> None:
        """Store one JSON-able value under ``key`` (its own transaction)."""
        text = json.dumps(value, separators=(",", ":"), allow_nan=False)
        self._write(f"writing state {key!r}", lambda c: c.execute(_PUT_KV, (key, text)))

    def load_state(self, key: str) -> Any | None:
        """The value stored under ``key`` (by ``append_cycle`` or ``put_state``), or None."""
        try:
            row = self._db().execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            raise _translate(self.path, f"reading state {key!r}", exc) from exc
        return None if row is None else json.loads(row[0])

    # -- reading -----------------------------------------------------------------------------
    def _reading(self, pid: int, period: int, ts: int, value: float, qid: int) -> Reading:
        code = self._point_codes.get(pid)
        word = self._quality_words.get(qid)
        if code is None or word is None:   # interned by the writer after we loaded
            self._load_codes()
            code = self._point_codes.get(pid, f"#{pid}")
            word = self._quality_words.get(qid, f"#{qid}")
        return Reading(code, _PERIODS[period], ts, value, word)

    def _select(self, point: str | None, period: Period | str | None, since_ms: int | None,
                until_ms: int | None, limit: int | None) -> tuple[str, list[Any]] | None:
        where: list[str] = []
        args: list[Any] = []
        if point is not None:
            pid = self._point_ids.get(point)
            if pid is None:
                self._load_codes()
                pid = self._point_ids.get(point)
            if pid is None:
                return None
            where.append("point_id = ?")
            args.append(pid)
        code = None if period is None else PERIOD_CODES[Period(period)]
        if code is not None:
            # a literal (a small int from PERIOD_CODES), so the planner can match the partial
            # index of this period ("WHERE period = <code>")
            where.append(f"period = {int(code)}")
        if since_ms is not None:
            where.append("ts >= ?")
            args.append(since_ms)
        if until_ms is not None:
            where.append("ts < ?")
            args.append(until_ms)
        sql = "SELECT point_id, period, ts, value, quality FROM reading"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # (ts, point_id, period) is unique: the order of reading_time, so no sort is needed
        if point is not None and code:
            sql += " ORDER BY ts"                # one point, one interval period: ts is unique
        elif point is not None:   # sorts only readings of equal ts ("RIGHT PART" of the order)
            sql += " ORDER BY ts, period"
        else:
            sql += " ORDER BY ts, point_id, period"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return sql, args

    def query(self, point: str | None = None, period: Period | str | None = None,
              since_ms: int | None = None, until_ms: int | None = None,
              limit: int | None = None) -> Iterator[Reading]:
        """Stored readings ordered by ``ts`` (then point and period), filtered; ``until_ms``
        exclusive. An index serves every combination; a point's instants are found by time."""
        selected = self._select(point, period, since_ms, until_ms, limit)
        if selected is None:
            return
        sql, args = selected
        try:
            cur = self._db().execute(sql, args)
            while rows := cur.fetchmany(_FETCH):
                for row in rows:
                    yield self._reading(*row)
        except sqlite3.Error as exc:
            raise _translate(self.path, "querying readings", exc) from exc

    def query_plan(self, point: str | None = None, period: Period | str | None = None,
                   since_ms: int | None = None, until_ms: int | None = None,
                   limit: int | None = None) -> list[str]:
        """SQLite's plan for the same :meth:`query` (to check that an index serves it)."""
        selected = self._select(point, period, since_ms, until_ms, limit)
        if selected is None:
            return []
        sql, args = selected
        return [row[3] for row in self._db().execute("EXPLAIN QUERY PLAN " + sql, args)]

    def after(self, reading_id: int, limit: int = 1000) -> list[tuple[int, Reading]]:
        """Up to ``limit`` readings with an id above ``reading_id``, by id (for the sealer)."""
        rows = self._db().execute(
            "SELECT id, point_id, period, ts, value, quality FROM reading WHERE id > ? "
            "ORDER BY id LIMIT ?", (reading_id, limit)).fetchall()
        codes, words, periods = self._point_codes, self._quality_words, _PERIODS
        try:    # the hot path of sealing a backlog: plain lookups, no per-row method call
            return [(i, Reading(codes[p], periods[per], ts, v, words[q]))
                    for i, p, per, ts, v, q in rows]
        except KeyError:                # a code interned by the writer after we loaded
            return [(row[0], self._reading(*row[1:])) for row in rows]

    def last_id(self) -> int:
        """The highest reading id ever given (0 for a new store; never goes down)."""
        row = self._db().execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'reading'").fetchone()
        return 0 if row is None else int(row[0])

    def count(self) -> int:
        """Number of readings stored."""
        return int(self._db().execute("SELECT count(*) FROM reading").fetchone()[0])

    # -- size --------------------------------------------------------------------------------
    def _pages(self) -> tuple[int, int, int]:
        conn = self._db()
        page_count = conn.execute("PRAGMA page_count").fetchone()[0]
        freelist = conn.execute("PRAGMA freelist_count").fetchone()[0]
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        return int(page_count), int(freelist), int(page_size)

    def used_bytes(self) -> int:
        """Bytes of pages in use: ``(page_count - freelist_count) * page_size``.

        This, not the file size, is what eviction watches: deleting rows moves pages to the
        freelist (reused by later inserts) without shrinking the file until an incremental
        vacuum and a checkpoint hand them back.
        """
        page_count, freelist, page_size = self._pages()
        return (page_count - freelist) * page_size

    def file_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL (and shared-memory index)."""
        return store_file_bytes(self.path)

    # -- eviction ----------------------------------------------------------------------------
    def prune(self, now_ms: int | None = None,
              protected_from_id: int | None = None) -> PruneResult:
        """Evict the oldest readings beyond ``retention_days`` or the disk budget.

        Never deletes a reading whose id is ``>= protected_from_id`` (the uplink's first
        undelivered reading); ``None`` protects nothing. Deletes in chunks (one transaction
        each, so the writer is never held for long), then gives freed pages back to the file
        system (incremental vacuum + WAL checkpoint). The budget covers the database and its
        WAL: pages in use may reach ``disk_budget_bytes`` minus the WAL limit; eviction then
        goes down to 90 % of that.
        """
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        guard = protected_from_id if protected_from_id is not None else 2**62
        before = self.file_bytes()
        cutoff = now_ms - self.retention_days * _DAY_MS

        by_age = self._thin(now_ms, guard) if self.full_resolution_days is not None else 0
        while True:
            n = self._write("pruning by age", lambda c: c.execute(
                "DELETE FROM reading WHERE id IN (SELECT id FROM reading "
                "WHERE ts < ? AND id < ? LIMIT ?)", (cutoff, guard, _CHUNK)).rowcount)
            by_age += n
            if n < _CHUNK:
                break

        allowed, target = self._budget_marks()
        by_budget = 0
        over = False
        if self.used_bytes() > allowed:
            while (used := self.used_bytes()) > target:
                lo = self._db().execute("SELECT min(id) FROM reading").fetchone()[0]
                if lo is None or lo >= guard:
                    over = True
                    break
                hi = self._db().execute("SELECT max(id) FROM reading").fetchone()[0]
                per_row = max(used / max(hi - lo + 1, 1), 1.0)
                chunk = int(min(max((used - target) / per_row, 1000), 10 * _CHUNK))
                by_budget += self._delete_below(min(lo + chunk, guard))
            if over:
                log.warning("store %s: %d bytes in use exceed the budget, but the rest is not "
                            "delivered yet (protected from id %s)", self.path, self.used_bytes(),
                            protected_from_id)
        self._release_free_pages()
        after = self.file_bytes()
        if by_age or by_budget:
            log.info("store %s: pruned %d old and %d over-budget readings (%d -> %d bytes)",
                     self.path, by_age, by_budget, before, after)
        return PruneResult(by_age, by_budget, before, after, over)

    def _budget_marks(self) -> tuple[int, int]:
        """(bytes in use that trigger eviction, bytes eviction goes down to)."""
        allowed = max(self.disk_budget_bytes - _WAL_LIMIT, self.disk_budget_bytes // 2)
        return allowed, int(allowed * _LOW_WATER)

    def budget_excess(self) -> int:
        """Bytes to free to get back under the budget's low-water mark; 0 when within it."""
        allowed, target = self._budget_marks()
        used = self.used_bytes()
        return used - target if used > allowed else 0

    def _thin(self, now_ms: int, guard: int) -> int:
        """Drop instant readings older than ``full_resolution_days`` that are off the
        15-minute grid: what is kept for the whole retention are the samples at :00, :15, :30
        and :45 (the counter values at the boundaries the platform's intervals use) and every
        interval reading. A watermark in ``kv`` makes each pass start where the last ended."""
        assert self.full_resolution_days is not None
        cutoff = now_ms - self.full_resolution_days * _DAY_MS
        start = self.load_state("store.thinned_until") or 0
        if cutoff <= start:
            return 0
        thinned = 0
        while True:
            n = self._write("thinning old instant readings", lambda c: c.execute(
                "DELETE FROM reading WHERE id IN (SELECT id FROM reading "
                "WHERE ts >= ? AND ts < ? AND period = 0 AND ts % ? != 0 AND id < ? LIMIT ?)",
                (start, cutoff, _QUARTER_MS, guard, _CHUNK)).rowcount)
            thinned += n
            if n < _CHUNK:
                break
        # Rows at or above the guard (not delivered yet) were kept; thin them on a later pass.
        low = self._db().execute(
            "SELECT min(ts) FROM reading WHERE id >= ? AND ts >= ? AND ts < ? AND period = 0",
            (guard, start, cutoff)).fetchone()[0]
        self.put_state("store.thinned_until", cutoff if low is None else int(low))
        return int(thinned)

    def _delete_below(self, reading_id: int) -> int:
        def work(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM reading WHERE id < ?", (reading_id,)).rowcount

        return int(self._write("pruning by size", work))

    def release_free_pages(self) -> None:
        """Give freed pages back to the file system (incremental vacuum, WAL checkpoint)."""
        self._release_free_pages()

    def _release_free_pages(self) -> None:
        conn = self._db()
        try:
            if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:   # 2 = INCREMENTAL
                free = conn.execute("PRAGMA freelist_count").fetchone()[0]
                while free > 0:
                    conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_STEP})").fetchall()
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    left = conn.execute("PRAGMA freelist_count").fetchone()[0]
                    if left >= free:
                        break
                    free = left
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error as exc:
            raise _translate(self.path, "releasing free pages", exc) from exc
