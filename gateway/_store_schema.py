"""The store's schema as recorded migrations (sqlite-utils ``Migrations``), and its small codes.

sqlite-utils 4.x ships a migration runner (``sqlite_utils.Migrations``): each step is a function,
applied once, recorded with its time in the ``_sqlite_migrations`` table (set, name, applied_at)
in the same transaction as the step itself. We use it as is, so ``sqlite-utils migrate`` and
``sqlite-utils migrations`` can inspect a gateway's store too. Add steps at the end; never edit
or reorder an applied one.

Tables (``docs/store.md`` explains the choices)::

    reading  id INTEGER PRIMARY KEY AUTOINCREMENT   monotonic, never reused: the sealer's order
             point_id → point.id, period (small int), ts (ms), value (REAL), quality (small int)
             unique index reading_time(ts, point_id, period)
             partial indexes reading_<period>(point_id, ts) WHERE period = <code>, for
             15min, hour, day, month (not instant)
    point    id, code UNIQUE, unit, energy, meter    codes interned: rows stay small
    period   id, name                                fixed codes below
    quality  id, word UNIQUE                         fixed codes below; new words appended
    kv       key PRIMARY KEY, value (JSON text)     tracker state, cursors, meter statistics
"""

from __future__ import annotations

from typing import Any

from sqlite_utils import Migrations

from protocol import Period, Quality

__all__ = ["MIGRATIONS", "PERIOD_CODES", "QUALITY_CODES"]

# Stored codes. Never renumber: they are on disk. Quality words not listed get the next free id
# (table ``quality``) the first time they are stored.
PERIOD_CODES: dict[str, int] = {
    Period.INSTANT: 0,
    Period.MIN15: 1,
    Period.HOUR: 2,
    Period.DAY: 3,
    Period.MONTH: 4,
}
QUALITY_CODES: dict[str, int] = {
    Quality.GOOD: 0,             # 0 takes no bytes in a SQLite record (serial type 8)
    Quality.COMM_ERROR: 1,
    Quality.CLOCK_UNSYNCED: 2,
    Quality.LATE: 3,
    Quality.COUNTER_RESET: 4,
    Quality.ROLLOVER: 5,
    Quality.OUT_OF_RANGE: 6,
    Quality.ESTIMATED: 7,
    Quality.MANUAL: 8,
}

MIGRATIONS = Migrations("kemon.gateway.store")


@MIGRATIONS(name="0001_readings")
def _readings(db: Any) -> None:
    db["point"].create(
        {"id": int, "code": str, "unit": str, "energy": str, "meter": str},
        pk="id", not_null={"code", "unit", "meter"}, defaults={"unit": "", "meter": ""},
    )
    db["point"].create_index(["code"], index_name="point_code", unique=True)
    db["period"].create({"id": int, "name": str}, pk="id", not_null={"name"})
    db["period"].insert_all([{"id": i, "name": str(p)} for p, i in PERIOD_CODES.items()])
    db["quality"].create({"id": int, "word": str}, pk="id", not_null={"word"})
    db["quality"].create_index(["word"], index_name="quality_word", unique=True)
    db["quality"].insert_all([{"id": i, "word": str(q)} for q, i in QUALITY_CODES.items()])
    # AUTOINCREMENT: ids are never reused even after every row was pruned, so a cursor over
    # them (the sealer's) can only move forward. sqlite-utils' create() has no AUTOINCREMENT.
    db.execute(
        "CREATE TABLE reading ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " point_id INTEGER NOT NULL REFERENCES point(id),"
        " period INTEGER NOT NULL,"
        " ts INTEGER NOT NULL,"
        " value REAL NOT NULL,"
        " quality INTEGER NOT NULL)"
    )
    # Time-major unique key: every cycle appends at the right edge of this index, so a commit
    # dirties a handful of pages. A point-major key would dirty one leaf page per point per
    # cycle (measured: 76,000 vs 356,000 rows/s in 500-row transactions; docs/store.md).
    db.execute("CREATE UNIQUE INDEX reading_time ON reading (ts, point_id, period)")
    # A point's consumption history, one partial index per interval period (instants, most of
    # the rows, are in none: one point's instants are found through reading_time). A query
    # uses one only when it says "period = <literal>", which the store's query does.
    for name, code in PERIOD_CODES.items():
        if code:
            db.execute(f"CREATE INDEX reading_{name} ON reading (point_id, ts) "
                       f"WHERE period = {code}")
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")


@MIGRATIONS(name="0002_outbox")
def _outbox(db: Any) -> None:
    """Sealed batches (the outbox every destination reads with its own cursor in ``kv``,
    ``cursor.<destination>``) and the platform's notices (推送信息) for the local page."""
    db.execute(
        "CREATE TABLE batch ("
        " seq INTEGER PRIMARY KEY,"          # gateway-wide, 1, 2, …: the hash chain's order
        " kind TEXT NOT NULL,"               # data | resend | gap
        " first_id INTEGER,"                 # reading ids the batch holds (data batches)
        " last_id INTEGER,"
        " count INTEGER NOT NULL,"           # readings in the batch
        " created INTEGER NOT NULL,"         # ms
        " hash BLOB NOT NULL,"               # SHA-256 of payload: the next batch's prev
        " payload BLOB NOT NULL)"            # the sealed bytes, exactly as published
    )
    db.execute("CREATE INDEX batch_last_id ON batch (last_id)")
    db.execute(
        "CREATE TABLE notice ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " received INTEGER NOT NULL,"        # ms
        " destination TEXT NOT NULL,"        # which platform sent it
        " body TEXT NOT NULL)"               # the notice as JSON
    )
