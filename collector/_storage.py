"""The collector's storage: one interface, two back ends (SQLite embedded, PostgreSQL for scale).

:func:`open_storage` takes the ``database`` URL of the collector configuration:

- ``sqlite:///var/lib/kemon/collector.db`` — an absolute path (three slashes: an empty host, as
  in ``file:///``); ``sqlite:collector.db`` or ``sqlite:data/collector.db`` — a path relative to
  ``base_dir`` (the configuration file's directory, when the caller passes it) or else to the
  working directory. No host, no query, no ``:memory:`` (a collector must keep what it
  acknowledged). Percent-escapes in the path are decoded.
- ``postgresql://user@host:port/db`` (or ``postgres://``) — any libpq URL, passed to libpq as
  is: a unix socket with ``postgresql://user@/db?host=/run/postgresql``, a password from
  ``~/.pgpass`` or ``PGPASSWORD``, TLS with ``sslmode=verify-full`` and friends.

Every method is synchronous and one call is one transaction; the asyncio ingest calls them from a
worker thread. A Storage object may be shared by threads (calls are serialized); several
processes may share one database (both back ends; see each module for how writers are kept
apart). :meth:`Storage.store` is exactly-once: a batch is identified by (unit, gateway, seq) and
its hash, a reading by (unit, gateway, point, period, ts); storing anything twice stores it once.

Errors (one line each; a password in a URL is never shown)::

    StorageError                  base: not a collector database, closed, a database error
    ├── StorageURLError           the URL is not one open_storage understands (also ValueError)
    └── StorageUnavailableError   cannot reach the database, or it is busy, locked or full
                                  past the timeouts: nothing was stored, try again later
"""

from __future__ import annotations

import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import unquote

from protocol import Period, ReadingColumns, to_rfc3339

from ._records import GatewayStatus, Quarantined, VerifiedBatch
from ._schema import PERIOD_CODES

__all__ = [
    "GatewayRow",
    "PinnedCertificate",
    "RelayBacklog",
    "RelayBatch",
    "Storage",
    "StorageError",
    "StorageURLError",
    "StorageUnavailableError",
    "StoredReading",
    "open_storage",
    "redact_url",
]

QUARANTINE_PAYLOAD_MAX = 64 * 1024      # bytes of a quarantined message kept (records.py)


class StorageError(Exception):
    """A storage operation failed; ``url`` names the database (without its password)."""

    def __init__(self, url: str, message: str) -> None:
        self.url = redact_url(url)
        super().__init__(f"database {self.url}: {message}")


class StorageURLError(StorageError, ValueError):
    """The database URL is malformed or names an unsupported kind of database."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached, or stayed busy, locked or full past the timeouts.
    Nothing of the failed call was stored; the caller retries later (and acknowledges
    nothing meanwhile)."""


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as the collector stores it: with the unit and gateway that sent it."""

    unit: str
    gateway: str
    point: str
    period: Period
    ts: int
    value: float
    quality: str

    def to_json_dict(self) -> dict[str, Any]:
        """CONTRACT.md's reading JSON, with ``unit`` and ``gateway``."""
        return {
            "unit": self.unit,
            "gateway": self.gateway,
            "point": self.point,
            "period": str(self.period),
            "ts": to_rfc3339(self.ts),
            "value": self.value,
            "quality": self.quality,
        }


class RelayBatch(NamedTuple):
    """A stored batch as the relay sends it on: ``id`` its row id (the relay cursor's unit),
    ``via`` the relay path it came through (names, oldest first), ``payload`` the sealed
    bytes exactly as received."""

    id: int
    unit: str
    gateway: str
    seq: int
    via: tuple[str, ...]
    payload: bytes


class PinnedCertificate(NamedTuple):
    """The certificate a gateway's batches are verified with (PEM), since ``pinned`` (ms)."""

    unit: str
    gateway: str
    version: str | None
    pem: str
    pinned: int


class RelayBacklog(NamedTuple):
    """``pending`` stored batches after ``cursor`` (the last batch id ``upstream``
    acknowledged, 0 for none), which was stored at ``updated`` (ms; None: never)."""

    upstream: str
    cursor: int
    pending: int
    updated: int | None

    def to_json_dict(self) -> dict[str, Any]:
        return {"upstream": self.upstream, "cursor": self.cursor, "pending": self.pending,
                "updated": None if self.updated is None else to_rfc3339(self.updated)}


_RELAY_SELECT = ("SELECT b.id, g.unit, g.gateway, b.seq, b.via, b.payload FROM batch b "
                 "JOIN gateway g ON g.id = b.gateway_id ")


def _relay_batch(row: Sequence[Any]) -> RelayBatch:
    i, unit, gateway, seq, via, payload = row
    return RelayBatch(int(i), str(unit), str(gateway), int(seq), tuple(str(via).split()),
                      bytes(payload))


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """One gateway in the inventory. ``status``: ``online``, ``offline`` (its last will or a
    clean disconnect) or ``unknown`` (no status message yet); ``last_seen`` (ms) the arrival of
    its last stored batch or status message; ``gaps`` how many seqs between its lowest and
    highest stored batch are missing (:meth:`Storage.missing_seqs` lists them); ``batches``,
    ``readings`` (newly stored ones: duplicates are not counted) and ``quarantined`` are
    running counts."""

    unit: str
    gateway: str
    version: str | None
    last_seen: int | None
    status: str
    last_seq: int | None
    gaps: int
    batches: int
    readings: int
    quarantined: int

    def to_json_dict(self) -> dict[str, Any]:
        """For ``kemon collector status --json``: times as RFC 3339."""
        return {
            "unit": self.unit,
            "gateway": self.gateway,
            "version": self.version,
            "last_seen": None if self.last_seen is None else to_rfc3339(self.last_seen),
            "status": self.status,
            "last_seq": self.last_seq,
            "gaps": self.gaps,
            "batches": self.batches,
            "readings": self.readings,
            "quarantined": self.quarantined,
        }


@runtime_checkable
class Storage(Protocol):
    """What the collector needs of a database. One call, one transaction."""

    def store(self, batches: Sequence[VerifiedBatch],
              quarantined: Sequence[Quarantined] = ()) -> int:
        """In ONE transaction: the new batches with their readings, the inventory, and the
        quarantined records. A batch already stored (same unit, gateway, seq and hash) is
        skipped; a batch whose seq is stored with a different hash is quarantined (kind
        ``conflict``) and nothing is overwritten; readings are stored once each on
        (unit, gateway, point, period, ts), whichever batch brings them. Returns how many
        readings were newly stored."""
        ...

    def record_status(self, status: GatewayStatus) -> None:
        """The gateway's status message (birth or last will): status, version, last seen. An
        older message than the stored one (by ``received``) changes nothing."""
        ...

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        """The certificate (PEM) pinned for this gateway, or None."""
        ...

    def pin_certificate(self, unit: str, gateway: str, pem: str, *,
                        replace: bool = False) -> None:
        """Pin ``pem`` for this gateway. Without ``replace`` the first pin stays (two
        collectors pinning at once: one wins; read it back with :meth:`pinned_certificate`);
        ``replace=True`` is for an operator re-pinning after a certificate renewal."""
        ...

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        """(seq, hash) of the highest stored seq of this gateway, or None."""
        ...

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        """The hash of the stored batch ``seq`` of this gateway, or None."""
        ...

    def stored_chain(self, keys: Sequence[tuple[str, str, int]],
                     gateways: Sequence[tuple[str, str]],
                     ) -> tuple[dict[tuple[str, str, int], bytes],
                                dict[tuple[str, str], tuple[int, bytes]]]:
        """In one go (one query on PostgreSQL): the hashes of the stored batches among
        ``keys`` ((unit, gateway, seq); those not stored are absent) and the highest stored
        (seq, hash) of each of ``gateways`` (absent when none). What verifying a group of
        batches asks (``collector._ingest_state.GroupLookups.prefetched``)."""
        ...

    def missing_seqs(self, unit: str, gateway: str,
                     limit: int = 1000) -> list[tuple[int, int]]:
        """Inclusive ranges of seqs missing between this gateway's lowest and highest stored
        batch, lowest first, at most ``limit`` ranges: stored 1, 2, 5, 9 → [(3, 4), (6, 8)]."""
        ...

    def readings(self, *, unit: str | None = None, gateway: str | None = None,
                 point: str | None = None, period: Period | str | None = None,
                 since_ms: int | None = None, until_ms: int | None = None,
                 limit: int | None = None) -> Iterator[StoredReading]:
        """Stored readings, filtered (``since_ms`` inclusive, ``until_ms`` exclusive), ordered
        by ts, then unit, gateway, point and period; streamed (a large result is not held in
        memory). Reads through its own connection: other calls may run meanwhile."""
        ...

    def gateways(self) -> list[GatewayRow]:
        """The inventory, by unit and gateway."""
        ...

    def quarantine_counts(self) -> dict[str, int]:
        """How many messages were quarantined, by kind."""
        ...

    def relay_batches_after(self, upstream: str, after_id: int,
                            limit: int) -> list[RelayBatch]:
        """Up to ``limit`` stored batches with a row id above ``after_id``, in arrival order
        (row ids only grow, and a batch becomes visible only after every lower id is
        visible or never will be), with the sealed bytes exactly as received."""
        ...

    def stored_batches(self, unit: str, gateway: str, from_seq: int, to_seq: int,
                       limit: int) -> list[RelayBatch]:
        """Up to ``limit`` stored batches of one gateway with ``from_seq <= seq <= to_seq``,
        by seq (a resend request from the next level is answered from these)."""
        ...

    def relay_cursor(self, upstream: str) -> int:
        """The last row id ``upstream`` acknowledged (0 when none)."""
        ...

    def relay_ack(self, upstream: str, row_id: int) -> None:
        """Record that ``upstream`` has everything up to ``row_id`` (durably; the cursor never
        moves back)."""
        ...

    def pinned_certificates(self, since_ms: int = 0) -> list[PinnedCertificate]:
        """The gateways' pinned certificates pinned at or after ``since_ms``, oldest first."""
        ...

    def relay_backlog(self, upstream: str) -> RelayBacklog:
        """Where ``upstream``'s relay stands: its cursor and how many stored batches follow."""
        ...

    def relay_lease(self, upstream: str) -> bool:
        """Try to become (or confirm being) the one process relaying to ``upstream`` among all
        that share this database; True while this storage holds it. Held until ``close`` (or
        the process ends); asking again while holding it is cheap and says True."""
        ...

    def close(self) -> None:
        """Close the database connection (a second close does nothing)."""
        ...


def open_storage(url: str, *, base_dir: Path | str | None = None) -> Storage:
    """Open (creating and migrating as needed) the database named by ``url`` (module docstring
    for the forms). ``base_dir`` anchors a relative SQLite path."""
    if url.startswith(("postgresql://", "postgres://")):
        from ._pg_storage import PgStorage
        return PgStorage(url)
    if url.startswith("sqlite:"):
        from ._sqlite_storage import SqliteStorage
        return SqliteStorage(sqlite_path(url, base_dir), url=url)
    raise StorageURLError(url, "not a database URL: use sqlite:///abs/path.db, "
                          "sqlite:relative/path.db or postgresql://user@host:port/db")


def sqlite_path(url: str, base_dir: Path | str | None = None) -> Path:
    """The file a ``sqlite:`` URL names (see the module docstring)."""
    rest = url.removeprefix("sqlite:")
    if "?" in rest or "#" in rest:
        raise StorageURLError(url, "a sqlite URL takes no query or fragment")
    if rest.startswith("//"):
        host, sep, path = rest[2:].partition("/")
        if host or not sep or not path:
            raise StorageURLError(url, "a sqlite URL has no host: sqlite:///abs/path.db "
                                  "(absolute) or sqlite:path.db (relative)")
        return Path("/" + unquote(path))
    if not rest or rest.startswith("/") or rest == ":memory:":
        raise StorageURLError(url, "expected sqlite:///abs/path.db (absolute) or "
                              "sqlite:path.db (relative); a collector needs a file")
    relative = Path(unquote(rest))
    return Path(base_dir) / relative if base_dir is not None else relative


_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


# ---------------------------------------------------------------- shared by the back ends

def check_status(status: GatewayStatus) -> None:
    """``ValueError`` unless the status is ``online`` or ``offline``."""
    if status.status not in ("online", "offline"):
        raise ValueError(f"gateway status {status.status!r} is neither online nor offline")


def now_ms() -> int:
    """The wall clock in ms since the epoch (when a pin or a cursor was written)."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StorePlan:
    """What :meth:`Storage.store` does with its batches, decided from the stored hashes."""

    new: tuple[VerifiedBatch, ...]          # store these (readings, batch row, inventory)
    duplicates: int                         # already stored with the same hash: skipped
    conflicts: tuple[Quarantined, ...]      # stored with another hash: quarantined


def plan_store(batches: Sequence[VerifiedBatch],
               stored: Mapping[tuple[str, str, int], bytes]) -> StorePlan:
    """Split ``batches`` by what ``stored`` ((unit, gateway, seq) → hash of what is already in
    the database) says; a seq repeated within ``batches`` counts as stored by its first."""
    seen = dict(stored)
    new: list[VerifiedBatch] = []
    conflicts: list[Quarantined] = []
    duplicates = 0
    for vb in batches:
        key = (vb.unit, vb.gateway, vb.seq)
        have = seen.get(key)
        if have is None:
            seen[key] = vb.hash
            new.append(vb)
        elif have == vb.hash:
            duplicates += 1
        else:
            conflicts.append(conflict_record(vb, have))
    return StorePlan(tuple(new), duplicates, tuple(conflicts))


def conflict_record(vb: VerifiedBatch, stored_hash: bytes) -> Quarantined:
    """The quarantine record of a verified batch whose seq is stored with another hash."""
    return Quarantined(
        topic=f"kemon/v1/{vb.unit}/{vb.gateway}/up/data",
        reason=(f"batch {vb.seq} of {vb.unit}/{vb.gateway} differs from the stored one "
                f"(hash {vb.hash[:8].hex()}…, stored {stored_hash[:8].hex()}…)"),
        kind="conflict",
        payload=vb.payload[:QUARANTINE_PAYLOAD_MAX],
        received=vb.received,
        unit=vb.unit,
        gateway=vb.gateway,
        seq=vb.seq,
    )


@dataclass(slots=True)
class InventoryDelta:
    """What one store() call adds to one gateway's inventory row."""

    seen: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    batches: int = 0
    readings: int = 0

    def add(self, vb: VerifiedBatch) -> None:
        self.seen = max(self.seen, vb.received)
        self.first_seq = vb.seq if self.first_seq is None else min(self.first_seq, vb.seq)
        self.last_seq = vb.seq if self.last_seq is None else max(self.last_seq, vb.seq)
        self.batches += 1


_PERIOD_CODE_AT = [PERIOD_CODES[p] for p in ReadingColumns.PERIODS]   # period_ix -> code


def reading_rows(batches: Sequence[VerifiedBatch], gateway_ids: Mapping[tuple[str, str], int],
                 point_ids: Mapping[str, int], quality_ids: Mapping[str, int],
                 ) -> list[tuple[int, int, int, int, float, int]]:
    """The ``reading`` rows (gateway_id, ts, point_id, period, value, quality) of
    ``batches``, in key order (the first four columns are the key).

    Straight from each batch's columns (``VerifiedBatch.columns``: no Reading objects): a
    batch's point and quality tables become ids once, then each column is mapped through them
    and the columns zipped into rows (map and zip run in C); the rows of one gateway's batches
    are nearly sorted already, which the sort finds."""
    period_code = _PERIOD_CODE_AT.__getitem__
    rows: list[tuple[int, int, int, int, float, int]] = []
    for vb in batches:
        c = vb.columns
        pids = [point_ids[code] for code in c.points]
        qids = [quality_ids[word] for word in c.qualities]
        rows += zip(repeat(gateway_ids[vb.unit, vb.gateway], len(c.ts)), c.ts,
                    map(pids.__getitem__, c.point_ix), map(period_code, c.period_ix),
                    c.values, map(qids.__getitem__, c.quality_ix), strict=True)
    rows.sort()
    return rows


def reading_codes(batches: Sequence[VerifiedBatch]) -> tuple[set[str], set[str]]:
    """The point codes and the quality words (as text) of ``batches``' readings."""
    points: set[str] = set()
    words: set[str] = set()
    for vb in batches:
        c = vb.columns
        points.update(c.points)
        words.update(c.qualities)
    return points, {str(word) for word in words}


def batch_row(vb: VerifiedBatch, gateway_id: int) -> tuple[Any, ...]:
    """The ``batch`` row of ``vb``: gateway_id, seq, hash, prev, kind, chain, created,
    received, count, via, payload."""
    b = vb.batch
    return (gateway_id, b.seq, vb.hash, b.prev, b.kind, vb.chain, b.created, vb.received,
            vb.count, " ".join(vb.via), vb.payload)


def quarantine_row(q: Quarantined) -> tuple[Any, ...]:
    """The ``quarantine`` row of ``q``: received, kind, reason, topic, unit, gateway, seq,
    payload."""
    return (q.received, q.kind, q.reason, q.topic, q.unit, q.gateway, q.seq,
            bytes(q.payload[:QUARANTINE_PAYLOAD_MAX]))


def readings_query(*, unit: str | None, gateway: str | None, point: str | None,
                   period: Period | str | None, since_ms: int | None, until_ms: int | None,
                   limit: int | None) -> tuple[str, list[Any]]:
    """The SQL (``?`` placeholders) and arguments of :meth:`Storage.readings`."""
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("g.unit", unit), ("g.gateway", gateway), ("p.code", point)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if period is not None:
        where.append("r.period = ?")
        args.append(PERIOD_CODES[Period(period)])
    if since_ms is not None:
        where.append("r.ts >= ?")
        args.append(since_ms)
    if until_ms is not None:
        where.append("r.ts < ?")
        args.append(until_ms)
    sql = ("SELECT g.unit, g.gateway, p.code, r.period, r.ts, r.value, q.word FROM reading r"
           " JOIN gateway g ON g.id = r.gateway_id"
           " JOIN point p ON p.id = r.point_id"
           " JOIN quality q ON q.id = r.quality")
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY r.ts, g.unit, g.gateway, p.code, r.period"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return sql, args


class SqlStorage(ABC):
    """The read-side methods both back ends share (SQL with ``?`` placeholders); a back end
    supplies :meth:`_rows` and the writes. Calls are serialized by ``_lock``."""

    url: str

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.RLock()

    @abstractmethod
    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read-only query; its rows."""

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        rows = self._rows("SELECT c.pem FROM certificate_pin c JOIN gateway g "
                          "ON g.id = c.gateway_id WHERE g.unit = ? AND g.gateway = ?",
                          (unit, gateway))
        return str(rows[0][0]) if rows else None

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        rows = self._rows("SELECT b.seq, b.hash FROM batch b JOIN gateway g "
                          "ON g.id = b.gateway_id WHERE g.unit = ? AND g.gateway = ? "
                          "ORDER BY b.seq DESC LIMIT 1", (unit, gateway))
        return (int(rows[0][0]), bytes(rows[0][1])) if rows else None

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        rows = self._rows("SELECT b.hash FROM batch b JOIN gateway g ON g.id = b.gateway_id "
                          "WHERE g.unit = ? AND g.gateway = ? AND b.seq = ?",
                          (unit, gateway, seq))
        return bytes(rows[0][0]) if rows else None

    def stored_chain(self, keys: Sequence[tuple[str, str, int]],
                     gateways: Sequence[tuple[str, str]],
                     ) -> tuple[dict[tuple[str, str, int], bytes],
                                dict[tuple[str, str], tuple[int, bytes]]]:
        # One indexed query a key: cheap in-process (SQLite); PostgreSQL overrides it.
        with self._lock:
            hashes = {key: digest for key in keys
                      if (digest := self.batch_hash(*key)) is not None}
            lasts = {gw: last for gw in gateways if (last := self.last_batch(*gw)) is not None}
        return hashes, lasts

    def missing_seqs(self, unit: str, gateway: str,
                     limit: int = 1000) -> list[tuple[int, int]]:
        rows = self._rows(
            "SELECT s.seq + 1, s.nxt - 1 FROM ("
            " SELECT b.seq, LEAD(b.seq) OVER (ORDER BY b.seq) AS nxt FROM batch b"
            " WHERE b.gateway_id = (SELECT id FROM gateway WHERE unit = ? AND gateway = ?)"
            ") AS s WHERE s.nxt > s.seq + 1 ORDER BY s.seq LIMIT ?",
            (unit, gateway, limit))
        return [(int(lo), int(hi)) for lo, hi in rows]

    def gateways(self) -> list[GatewayRow]:
        rows = self._rows("SELECT unit, gateway, version, last_seen, status, first_seq, "
                          "last_seq, batches, readings, quarantined FROM gateway "
                          "ORDER BY unit, gateway")
        out = []
        for (unit, gateway, version, last_seen, status, first_seq, last_seq, batches,
             readings, quarantined) in rows:
            span = 0 if first_seq is None else int(last_seq) - int(first_seq) + 1
            out.append(GatewayRow(
                unit=unit, gateway=gateway, version=version,
                last_seen=None if last_seen is None else int(last_seen), status=status,
                last_seq=None if last_seq is None else int(last_seq),
                gaps=span - int(batches), batches=int(batches), readings=int(readings),
                quarantined=int(quarantined)))
        return out

    def quarantine_counts(self) -> dict[str, int]:
        rows = self._rows("SELECT kind, COUNT(*) FROM quarantine GROUP BY kind ORDER BY kind")
        return {str(kind): int(n) for kind, n in rows}

    def relay_batches_after(self, upstream: str, after_id: int,
                            limit: int) -> list[RelayBatch]:
        rows = self._rows(_RELAY_SELECT + "WHERE b.id > ? ORDER BY b.id LIMIT ?",
                          (after_id, limit))
        return [_relay_batch(row) for row in rows]

    def stored_batches(self, unit: str, gateway: str, from_seq: int, to_seq: int,
                       limit: int) -> list[RelayBatch]:
        rows = self._rows(_RELAY_SELECT + "WHERE g.unit = ? AND g.gateway = ? "
                          "AND b.seq BETWEEN ? AND ? ORDER BY b.seq LIMIT ?",
                          (unit, gateway, from_seq, to_seq, limit))
        return [_relay_batch(row) for row in rows]

    def pinned_certificates(self, since_ms: int = 0) -> list[PinnedCertificate]:
        rows = self._rows("SELECT g.unit, g.gateway, g.version, c.pem, c.pinned "
                          "FROM certificate_pin c JOIN gateway g ON g.id = c.gateway_id "
                          "WHERE c.pinned >= ? ORDER BY c.pinned", (since_ms,))
        return [PinnedCertificate(str(u), str(g), None if v is None else str(v), str(pem),
                                  int(at)) for u, g, v, pem, at in rows]

    def relay_backlog(self, upstream: str) -> RelayBacklog:
        rows = self._rows("SELECT after_id, updated FROM relay_cursor WHERE upstream = ?",
                          (upstream,))
        cursor, updated = (int(rows[0][0]), int(rows[0][1])) if rows else (0, None)
        [(pending,)] = self._rows("SELECT COUNT(*) FROM batch WHERE id > ?", (cursor,))
        return RelayBacklog(upstream, cursor, int(pending), updated)

    def relay_cursor(self, upstream: str) -> int:
        rows = self._rows("SELECT after_id FROM relay_cursor WHERE upstream = ?", (upstream,))
        return int(rows[0][0]) if rows else 0
