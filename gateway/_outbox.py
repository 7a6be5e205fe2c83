"""The outbox: readings sealed once into numbered, signed batches that every destination reads
with its own durable cursor (DESIGN decisions 1, 2 and 4).

::

    reading (id ↑) ──seal_pending()──► batch (seq ↑, prev = hash of seq-1, signed)
                                           │
              cursor.province ─────────────┤  acked_seq(dest) / batches_after / ack
              cursor.national ─────────────┘

Retention never drops what a destination has not acknowledged while anything delivered is left
to drop: ``prune()`` protects every reading from the first batch some destination still lacks
(and every reading not sealed yet). Only when the disk budget is exhausted by undelivered data
alone are the oldest undelivered batches evicted; then a ``gap`` batch saying which seqs and
readings were lost, when and why is sealed into the chain and delivered like any other, and the
cursors move past the evicted batches (they cannot be sent any more).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from protocol import ZERO_HASH, Batch, Reading, batch_hash, seal, to_rfc3339

from ._store import PruneResult, Store

__all__ = ["BATCH_SIZE", "Outbox", "OutboxStatus"]

log = logging.getLogger(__name__)

BATCH_SIZE = 200           # readings per batch (bench/bench_encoding.py: ≤ 12 bytes a reading)
_SEAL_GROUP = 50           # batches sealed per transaction
_SEALED_KEY = "outbox.sealed_upto_id"
_CURSOR = "cursor."


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    destination: str
    acked_seq: int
    pending: int


class Outbox:
    """Sealing and cursors over a ``Store``; implements ``OutboxLike`` for the uplinks."""

    def __init__(self, store: Store, *, unit: str, gateway: str, key: PrivateKeyTypes,
                 destinations: Sequence[str], batch_size: int = BATCH_SIZE,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.unit = unit
        self.gateway = gateway
        self.key = key
        self.destinations = tuple(destinations)
        self.batch_size = batch_size
        self._clock = clock
        row = store.read("SELECT seq, hash FROM batch ORDER BY seq DESC LIMIT 1")
        self._last_seq, self._last_hash = (int(row[0][0]), bytes(row[0][1])) if row else (
            0, ZERO_HASH)
        last = store.load_state("outbox.last")     # survives eviction of every batch row
        if last and int(last["seq"]) > self._last_seq:
            self._last_seq, self._last_hash = int(last["seq"]), bytes.fromhex(last["hash"])
        self._sealed_upto = int(store.load_state(_SEALED_KEY) or 0)
        self._acked = {d: int(store.load_state(_CURSOR + d) or 0) for d in self.destinations}

    # -- OutboxLike ------------------------------------------------------------------------
    def acked_seq(self, destination: str) -> int:
        return self._acked[destination]

    def last_seq(self) -> int:
        return self._last_seq

    def batches_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        rows = self.store.read("SELECT seq, payload FROM batch WHERE seq > ? ORDER BY seq "
                               "LIMIT ?", (seq, limit))
        return [(int(s), bytes(p)) for s, p in rows]

    def batches_between(self, first: int, last: int) -> list[tuple[int, bytes]]:
        """Stored batches with ``first <= seq <= last`` (for a resend request)."""
        rows = self.store.read("SELECT seq, payload FROM batch WHERE seq BETWEEN ? AND ? "
                               "ORDER BY seq", (first, last))
        return [(int(s), bytes(p)) for s, p in rows]

    def ack(self, destination: str, seq: int) -> None:
        if seq <= self._acked[destination]:
            return
        self.store.put_state(_CURSOR + destination, seq)
        self._acked[destination] = seq

    def status(self) -> list[OutboxStatus]:
        return [OutboxStatus(d, self._acked[d], self._last_seq - self._acked[d])
                for d in self.destinations]

    # -- sealing ---------------------------------------------------------------------------
    def seal_pending(self) -> int:
        """Seal every stored reading not sealed yet; returns the number of batches made."""
        made = 0
        while True:
            rows = self.store.after(self._sealed_upto, self.batch_size * _SEAL_GROUP)
            if not rows:
                return made
            groups = [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]
            made += self._append(
                [("data", [r for _, r in g], None, g[0][0], g[-1][0]) for g in groups],
                sealed_upto=rows[-1][0])

    def seal_special(self, kind: str, readings: Iterable[Reading],
                     info: dict[str, Any]) -> tuple[int, int]:
        """Seal ``readings`` (maybe none) as ``resend`` or ``gap`` batches carrying ``info``;
        returns the first and last seq made."""
        items = list(readings)
        groups = [items[i:i + self.batch_size] for i in range(0, len(items), self.batch_size)]
        first = self._last_seq + 1
        self._append([(kind, g, info, None, None) for g in groups or [[]]], None)
        return first, self._last_seq

    def _append(self, specs: list[tuple[str, list[Reading], dict[str, Any] | None,
                                        int | None, int | None]],
                sealed_upto: int | None) -> int:
        seq, prev = self._last_seq, self._last_hash
        now = int(self._clock() * 1000)
        rows = []
        for kind, readings, info, first_id, last_id in specs:
            seq += 1
            sealed = seal(Batch(unit=self.unit, gateway=self.gateway, seq=seq, prev=prev,
                                kind=kind, created=now, readings=tuple(readings), info=info),
                          self.key)
            prev = batch_hash(sealed)
            rows.append((seq, kind, first_id, last_id, len(readings), now, prev, sealed))
        last = {"seq": seq, "hash": prev.hex()}

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany("INSERT INTO batch (seq, kind, first_id, last_id, count, created, "
                             "hash, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            state: list[tuple[str, object]] = [("outbox.last", last)]
            if sealed_upto is not None:
                state.append((_SEALED_KEY, sealed_upto))
            for key, value in state:
                conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key) "
                             "DO UPDATE SET value = excluded.value", (key, _json(value)))

        self.store.write("sealing batches", work)
        self._last_seq, self._last_hash = seq, prev
        if sealed_upto is not None:
            self._sealed_upto = sealed_upto
        return len(rows)

    # -- retention -------------------------------------------------------------------------
    def protected_from_id(self) -> int:
        """The first reading id that some destination still needs (or that is not sealed)."""
        guard = self._sealed_upto + 1
        if self.destinations:
            slowest = min(self._acked.values())
            row = self.store.read("SELECT min(first_id) FROM batch WHERE seq > ? AND "
                                  "first_id IS NOT NULL", (slowest,))
            if row and row[0][0] is not None:
                guard = min(guard, int(row[0][0]))
        return guard

    def prune(self, now_ms: int | None = None) -> PruneResult:
        """Age and budget eviction that spares undelivered data; if the budget is exhausted by
        undelivered data alone, evict its oldest batches and seal a ``gap`` batch."""
        result = self.store.prune(now_ms, protected_from_id=self.protected_from_id())
        self._drop_spent_batches()
        if result.over_budget:
            self._evict_undelivered()
        return result

    def _drop_spent_batches(self) -> None:
        """Batches every destination has, whose readings are gone, are no use any more."""
        slowest = min(self._acked.values()) if self.destinations else self._last_seq
        self.store.write("dropping spent batches", lambda c: c.execute(
            "DELETE FROM batch WHERE seq <= ? AND seq < ? AND (last_id IS NULL OR "
            "last_id < coalesce((SELECT min(id) FROM reading), 9223372036854775807))",
            (slowest, self._last_seq)))

    def _evict_undelivered(self) -> None:
        """Evict the oldest undelivered batches (never the chain's head) until the store is
        back within its budget, then seal one ``gap`` batch describing everything lost."""
        first_seq: int | None = None
        last_seq = 0
        count = 0
        since: int | None = None
        until: int | None = None
        while (excess := self.store.budget_excess()) > 0:
            rows = self.store.read(
                "SELECT seq, first_id, last_id, count FROM batch WHERE seq > ? AND seq < ? "
                "ORDER BY seq LIMIT ?", (max(last_seq, min(self._acked.values())),
                                         self._last_seq, max(8, excess // (200 * 60))))
            if not rows:
                break                           # only the head is left: nothing more to give
            ids = [int(i) for _, a, b, _ in rows for i in (a, b) if i is not None]
            lo, hi = (min(ids), max(ids)) if ids else (None, None)
            if lo is not None:
                span = self.store.read("SELECT min(ts), max(ts) FROM reading WHERE id BETWEEN "
                                       "? AND ?", (lo, hi))[0]
                if span[0] is not None:
                    since = span[0] if since is None else min(since, span[0])
                    until = span[1] if until is None else max(until, span[1])
            round_first, round_last = int(rows[0][0]), int(rows[-1][0])

            def work(conn: sqlite3.Connection, lo: int | None = lo, hi: int | None = hi,
                     a: int = round_first, b: int = round_last) -> None:
                if lo is not None:
                    conn.execute("DELETE FROM reading WHERE id BETWEEN ? AND ?", (lo, hi))
                conn.execute("DELETE FROM batch WHERE seq BETWEEN ? AND ?", (a, b))
                for dest in self.destinations:
                    if self._acked[dest] < b:
                        conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT(key)"
                                     " DO UPDATE SET value = excluded.value",
                                     (_CURSOR + dest, str(b)))

            self.store.write("evicting undelivered batches", work)
            for dest in self.destinations:
                self._acked[dest] = max(self._acked[dest], round_last)
            first_seq = round_first if first_seq is None else first_seq
            last_seq = round_last
            count += sum(int(c) for *_, c in rows)
            self.store.release_free_pages()
        if first_seq is None:
            return
        info: dict[str, Any] = {
            "reason": "disk budget exhausted before delivery",
            "lost_seq": [first_seq, last_seq], "readings": count,
            "since": to_rfc3339(since) if since is not None else None,
            "until": to_rfc3339(until) if until is not None else None,
        }
        self.seal_special("gap", [], info)
        log.error("store budget exhausted by undelivered data: evicted batches %d-%d (%d "
                  "readings, %s to %s); a gap record was sealed for the platforms",
                  first_seq, last_seq, count, info["since"], info["until"])


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
