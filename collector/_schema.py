"""The collector database's schema: one design for SQLite and PostgreSQL, as recorded migrations.

Each migration step is a list of DDL templates written once; :func:`render` turns a template
into one dialect by substituting the few types that differ (``{ROWID}``, ``{INT8}``, …). A step
may add statements for one dialect only (PostgreSQL's BRIN index). Steps are applied in order,
each once, and recorded:

- SQLite: sqlite-utils' ``Migrations`` (table ``_sqlite_migrations``, set
  ``kemon.collector.storage``), so ``sqlite-utils migrations`` can inspect a collector database;
  the whole run happens inside ``BEGIN IMMEDIATE`` so two processes opening one new file at the
  same time apply each step once.
- PostgreSQL: table ``_migrations (name, applied_at)``; every pending step and its record in one
  transaction holding an advisory lock (:data:`PG_LOCK_MIGRATE`), so collectors starting together
  do not race.

Add steps at the end; never edit or reorder an applied one.

Tables (``unit``/``gateway``/``point``/``quality`` text is interned into small integer ids, so a
reading row is 28 bytes of data on PostgreSQL and a handful on SQLite)::

    gateway          the inventory: id, unit, gateway (UNIQUE together), version, status
                     (online | offline | unknown), status_at, last_seen (ms), first_seq,
                     last_seq, batches, readings, quarantined (running counts)
    point            id, code UNIQUE
    quality          id, word UNIQUE; the fixed words below are seeded with their codes
    batch            id (monotonic, never reused: the relay's order), gateway_id, seq, hash,
                     prev, kind, chain, created, received, count, via, payload (the sealed
                     bytes as received); UNIQUE (gateway_id, seq)
    reading          ts, value, gateway_id, point_id, period, quality;
                     PRIMARY KEY (gateway_id, ts, point_id, period)
    quarantine       id, received, kind, reason, topic, unit, gateway, seq, payload
    relay_cursor     upstream PRIMARY KEY, after_id (the last acknowledged batch.id), updated
    certificate_pin  gateway_id PRIMARY KEY, pem, pinned (ms)

Reading key order: gateway first, then time. A batch holds one gateway's readings for a few
timestamps, so storing it touches the right edge of that gateway's range of the key (a page or
two, not one page per point as a point-major key would), and the query commands — one unit, one
gateway, a time range — read one contiguous range. A query for one point scans its gateway's
range; a query over all gateways by time scans the table on SQLite and uses the BRIN index on
PostgreSQL (rows arrive roughly in time order, so the BRIN ranges are tight and cost almost
nothing to maintain). No second B-tree: each one would take ingest speed from every reading.
No foreign keys on ``reading``: a foreign key is one more index lookup per row; ids come from
the intern tables only. On SQLite ``reading`` is ``WITHOUT ROWID`` (the table is its key's
B-tree: one B-tree to update per reading instead of two). On PostgreSQL the column order puts
the 8-byte columns first, so the row has no alignment padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlite_utils import Migrations

from protocol import Period, Quality

__all__ = [
    "MIGRATIONS",
    "MIGRATION_SET",
    "PERIOD_CODES",
    "PERIOD_NAMES",
    "PG_LOCK_MIGRATE",
    "PG_LOCK_RELAY",
    "PG_LOCK_RELAY_LEASE",
    "QUALITY_CODES",
    "STEPS",
    "Dialect",
    "Step",
    "render",
]

Dialect = Literal["sqlite", "postgresql"]

MIGRATION_SET = "kemon.collector.storage"

# Stored codes. Never renumber: they are on disk. (The same numbers as the gateway's store, so a
# reading keeps its codes end to end; written here again because collector never imports
# gateway.) Quality words not listed get the next free id the first time they are stored.
PERIOD_CODES: dict[str, int] = {
    Period.INSTANT: 0,
    Period.MIN15: 1,
    Period.HOUR: 2,
    Period.DAY: 3,
    Period.MONTH: 4,
}
PERIOD_NAMES: dict[int, Period] = {code: Period(name) for name, code in PERIOD_CODES.items()}
QUALITY_CODES: dict[str, int] = {
    Quality.GOOD: 0,
    Quality.COMM_ERROR: 1,
    Quality.CLOCK_UNSYNCED: 2,
    Quality.LATE: 3,
    Quality.COUNTER_RESET: 4,
    Quality.ROLLOVER: 5,
    Quality.OUT_OF_RANGE: 6,
    Quality.ESTIMATED: 7,
    Quality.MANUAL: 8,
}
_FIRST_FREE_ID = 100     # PostgreSQL identities start here, above every seeded code

# PostgreSQL advisory lock keys (pg_advisory_xact_lock(classid, objid)): "KEM" and a number.
_PG_LOCK_CLASS = 0x4B454D
PG_LOCK_MIGRATE = (_PG_LOCK_CLASS, 1)
PG_LOCK_RELAY = (_PG_LOCK_CLASS, 2)
PG_LOCK_RELAY_LEASE = _PG_LOCK_CLASS + 1   # (this, CRC-32 of the upstream name): who relays

_TYPES: dict[Dialect, dict[str, str]] = {
    "sqlite": {
        "ROWID": "INTEGER PRIMARY KEY AUTOINCREMENT",    # never reused, even after deletes
        "SERIAL": "INTEGER PRIMARY KEY",
        "INT8": "INTEGER",
        "INT4": "INTEGER",
        "INT2": "INTEGER",
        "FLOAT8": "REAL",
        "BYTES": "BLOB",
        "TEXT": "TEXT",
        "CLUSTERED": " WITHOUT ROWID",
    },
    "postgresql": {
        "ROWID": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "SERIAL": f"INTEGER GENERATED BY DEFAULT AS IDENTITY (START WITH {_FIRST_FREE_ID}) "
                  "PRIMARY KEY",
        "INT8": "BIGINT",
        "INT4": "INTEGER",
        "INT2": "SMALLINT",
        "FLOAT8": "DOUBLE PRECISION",
        "BYTES": "BYTEA",
        "TEXT": "TEXT",
        "CLUSTERED": "",
    },
}


@dataclass(frozen=True, slots=True)
class Step:
    """One migration: DDL templates for both dialects, plus statements for one dialect only."""

    name: str
    statements: tuple[str, ...]
    only: dict[Dialect, tuple[str, ...]] = field(default_factory=dict)

    def sql(self, dialect: Dialect) -> list[str]:
        """The step's statements for ``dialect``, in order."""
        return [render(s, dialect) for s in self.statements] + list(self.only.get(dialect, ()))


def render(template: str, dialect: Dialect) -> str:
    """A DDL template with its ``{TYPE}`` placeholders replaced for ``dialect``."""
    return template.format(**_TYPES[dialect])


# built from the constants above, no outside input
_SEED_QUALITY = "INSERT INTO quality (id, word) VALUES " + ", ".join(  # noqa: S608
    f"({code}, '{word}')" for word, code in QUALITY_CODES.items())

STEPS: tuple[Step, ...] = (
    Step("0001_collector", (
        "CREATE TABLE gateway ("
        " id {SERIAL},"
        " unit {TEXT} NOT NULL,"
        " gateway {TEXT} NOT NULL,"
        " version {TEXT},"
        " status {TEXT} NOT NULL DEFAULT 'unknown',"     # online | offline | unknown
        " status_at {INT8},"                             # ms: the status message's arrival
        " last_seen {INT8},"                             # ms: the last message of any kind
        " first_seq {INT8},"                             # lowest and highest stored seq
        " last_seq {INT8},"
        " batches {INT8} NOT NULL DEFAULT 0,"
        " readings {INT8} NOT NULL DEFAULT 0,"
        " quarantined {INT8} NOT NULL DEFAULT 0,"
        " UNIQUE (unit, gateway))",
        "CREATE TABLE point (id {SERIAL}, code {TEXT} NOT NULL UNIQUE)",
        "CREATE TABLE quality (id {SERIAL}, word {TEXT} NOT NULL UNIQUE)",
        _SEED_QUALITY,
        "CREATE TABLE batch ("
        " id {ROWID},"
        " gateway_id {INT4} NOT NULL,"
        " seq {INT8} NOT NULL,"
        " hash {BYTES} NOT NULL,"                        # SHA-256 of payload
        " prev {BYTES} NOT NULL,"
        " kind {TEXT} NOT NULL,"                         # data | resend | gap
        " chain {TEXT} NOT NULL,"                        # ok | first | after_gap
        " created {INT8} NOT NULL,"
        " received {INT8} NOT NULL,"
        " count {INT4} NOT NULL,"
        " via {TEXT} NOT NULL DEFAULT '',"               # relay path, space-separated
        " payload {BYTES} NOT NULL,"                     # sealed bytes exactly as received
        " UNIQUE (gateway_id, seq))",
        "CREATE TABLE reading ("
        " ts {INT8} NOT NULL,"
        " value {FLOAT8} NOT NULL,"
        " gateway_id {INT4} NOT NULL,"
        " point_id {INT4} NOT NULL,"
        " period {INT2} NOT NULL,"
        " quality {INT2} NOT NULL,"
        " PRIMARY KEY (gateway_id, ts, point_id, period)){CLUSTERED}",
        "CREATE TABLE quarantine ("
        " id {ROWID},"
        " received {INT8} NOT NULL,"
        " kind {TEXT} NOT NULL,"
        " reason {TEXT} NOT NULL,"
        " topic {TEXT} NOT NULL,"
        " unit {TEXT},"
        " gateway {TEXT},"
        " seq {INT8},"
        " payload {BYTES} NOT NULL)",
        "CREATE TABLE relay_cursor ("
        " upstream {TEXT} PRIMARY KEY,"
        " after_id {INT8} NOT NULL,"
        " updated {INT8} NOT NULL)",
        "CREATE TABLE certificate_pin ("
        " gateway_id {INT4} PRIMARY KEY,"
        " pem {TEXT} NOT NULL,"
        " pinned {INT8} NOT NULL)",
    ), only={
        "postgresql": (
            "CREATE INDEX reading_ts ON reading USING brin (ts)",
            # payloads are zlib already: do not try to compress them again when TOASTed
            "ALTER TABLE batch ALTER COLUMN payload SET STORAGE EXTERNAL",
            "ALTER TABLE quarantine ALTER COLUMN payload SET STORAGE EXTERNAL",
        ),
    }),
)

# sqlite-utils' runner for the same steps (applied by collector._sqlite_storage).
MIGRATIONS = Migrations(MIGRATION_SET)


def _sqlite_step(step: Step) -> Callable[[Any], None]:
    def apply(db: Any) -> None:
        for statement in step.sql("sqlite"):
            db.execute(statement)

    apply.__name__ = step.name
    return apply


for _step in STEPS:
    MIGRATIONS(name=_step.name)(_sqlite_step(_step))
