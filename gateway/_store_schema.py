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
             partial index reading_point(point_id, period, ts) WHERE period > 0
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
    # A point's consumption history (15min/hour/day/month: period > 0) by point; instants of
    # one point are found through reading_time. Queries must say "period > 0" verbatim.
    db.execute("CREATE INDEX reading_point ON reading (point_id, period, ts) WHERE period > 0")
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")
