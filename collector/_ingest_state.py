"""The ingest's bookkeeping, without I/O: counters, the lookups a group is verified against,
and which gaps to ask a gateway to resend, when.

* :class:`Counters` — what the ingest has done since it started (logged periodically, read by
  tests and benchmarks).
* :class:`GroupLookups` — the verifier's view of storage while a group of messages is verified
  before its one ``store()`` transaction: the group's own batches count as stored (batch 7
  arriving in the group after batch 6 is ``ok``, not ``after_gap``, and a second copy of batch 6
  in the same group is a ``duplicate``), and stored hashes already seen are remembered (a stored
  batch never changes, so that cache cannot go stale; "not stored" is never cached, since
  another collector process may store it at any moment). Before a group is verified,
  :meth:`GroupLookups.prefetched` reads in one query what its verification will ask (each
  batch's seq and seq-1, each gateway's last batch) when storage can answer in bulk
  (:class:`ChainLookups`): one database round trip a group instead of one or two a batch.
  That answer, "not stored" included, holds for that one group's verification only; a batch
  another process stores meanwhile is then found by ``store()``, which decides again inside
  its transaction (a duplicate is skipped, a conflict quarantined), as it always has for
  batches stored between verification and storage.
* :class:`GapWatch` — gateways with missing seqs, when to look at them again, and a rate limit
  of one resend request per range per ``interval``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ._records import VerifiedBatch
from ._verify import Lookups

__all__ = ["ChainLookups", "Counters", "GapWatch", "GroupLookups"]

Gateway = tuple[str, str]          # (unit, gateway)
SeqRange = tuple[int, int]         # inclusive
BatchKey = tuple[str, str, int]    # (unit, gateway, seq)


@runtime_checkable
class ChainLookups(Lookups, Protocol):
    """Lookups that can also answer a group's questions in one go (the storage layer)."""

    def stored_chain(self, keys: Sequence[BatchKey], gateways: Sequence[Gateway],
                     ) -> tuple[dict[BatchKey, bytes], dict[Gateway, tuple[int, bytes]]]:
        """The stored hashes of ``keys`` (those not stored are absent) and the last stored
        (seq, hash) of each of ``gateways`` (absent when none)."""


@dataclass(slots=True)
class Counters:
    """What the ingest did since it started. ``messages`` counts every PUBLISH received (a
    redelivery again); ``acked`` the PUBACKs sent; ``batches_stored``/``readings_stored`` what
    ``store()`` was given and what it newly wrote; ``duplicates`` batches acknowledged without
    storing; ``quarantined`` by kind; ``queue_depth`` messages waiting now; ``pauses`` how often
    reading from the socket stopped because the queue was full; ``storage_failures`` attempts
    that found the database unavailable."""

    messages: int = 0
    acked: int = 0
    statuses: int = 0
    groups: int = 0
    batches_stored: int = 0
    readings_stored: int = 0
    duplicates: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    resend_requests: int = 0
    storage_failures: int = 0
    connections: int = 0
    pauses: int = 0
    queue_depth: int = 0

    def line(self) -> str:
        """One log line."""
        kinds = ",".join(f"{k}={n}" for k, n in sorted(self.quarantined.items())) or "0"
        return (f"messages={self.messages} acked={self.acked} statuses={self.statuses} "
                f"batches={self.batches_stored} readings={self.readings_stored} "
                f"duplicates={self.duplicates} quarantined[{kinds}] "
                f"resend_requests={self.resend_requests} "
                f"storage_failures={self.storage_failures} connections={self.connections} "
                f"pauses={self.pauses} queue={self.queue_depth}")


class GroupLookups:
    """``Lookups`` over ``storage`` plus the groups verified but not yet stored (see the module
    docstring). Thread-safe: one group is verified in one thread while the previous one is
    stored from another.

    ``add(token, batch)`` once a batch of group ``token`` is verified; ``commit(token)`` after
    that group's ``store()`` returned, ``discard(token)`` when it will not be stored.
    ``cache_size`` stored hashes are remembered (oldest forgotten first).
    """

    def __init__(self, storage: Lookups, cache_size: int = 100_000) -> None:
        self._storage = storage
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._stored: dict[BatchKey, bytes] = {}
        self._pending: dict[int, dict[BatchKey, bytes]] = {}
        # what this process committed since it started: the highest (seq, hash) a gateway
        self._committed_last: dict[Gateway, tuple[int, bytes]] = {}
        # the group being verified: storage's answers read at its start (prefetched)
        self._read_keys: dict[BatchKey, bytes | None] = {}
        self._read_last: dict[Gateway, tuple[int, bytes] | None] = {}

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        return self._storage.pinned_certificate(unit, gateway)

    @contextlib.contextmanager
    def prefetched(self, wanted: Iterable[BatchKey]) -> Iterator[None]:
        """While verifying one group whose batches are ``wanted``: storage's answers about
        them read in one query (module docstring); a no-op for storage without
        ``stored_chain``. Called from the verifying thread only."""
        storage = self._storage
        if not isinstance(storage, ChainLookups):
            yield
            return
        gateways: set[Gateway] = set()
        keys: set[BatchKey] = set()
        with self._lock:
            known = [self._stored, *self._pending.values()]
            for unit, gateway, seq in wanted:
                gateways.add((unit, gateway))
                for s in (seq, seq - 1):
                    key = (unit, gateway, s)
                    if s >= 1 and not any(key in hashes for hashes in known):
                        keys.add(key)
        if not gateways:
            yield
            return
        ordered_keys, ordered_gateways = sorted(keys), sorted(gateways)
        hashes, lasts = storage.stored_chain(ordered_keys, ordered_gateways)
        self._read_keys = {key: hashes.get(key) for key in ordered_keys}
        self._read_last = {gw: lasts.get(gw) for gw in ordered_gateways}
        try:
            yield
        finally:
            self._read_keys, self._read_last = {}, {}

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        key = (unit, gateway, seq)
        with self._lock:
            found = self._stored.get(key)
            for group in self._pending.values():
                found = found or group.get(key)
        if found is None:
            if key in self._read_keys:
                found = self._read_keys[key]
            else:
                found = self._storage.batch_hash(unit, gateway, seq)
            if found is not None:
                with self._lock:
                    self._remember(key, found)
        return found

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        if (unit, gateway) in self._read_last:
            best = self._read_last[unit, gateway]
        else:
            best = self._storage.last_batch(unit, gateway)
        with self._lock:
            mine = self._committed_last.get((unit, gateway))
            if mine is not None and (best is None or mine[0] > best[0]):
                best = mine      # committed after storage was read
            for group in self._pending.values():
                for (u, g, seq), digest in group.items():
                    if u == unit and g == gateway and (best is None or seq > best[0]):
                        best = (seq, digest)
        return best

    def add(self, token: int, vb: VerifiedBatch) -> None:
        """Count ``vb`` as stored while later batches are verified."""
        with self._lock:
            self._pending.setdefault(token, {})[vb.unit, vb.gateway, vb.seq] = vb.hash

    def commit(self, token: int) -> None:
        """Group ``token`` is stored: remember its hashes."""
        with self._lock:
            for key, digest in self._pending.pop(token, {}).items():
                self._remember(key, digest)
                unit, gateway, seq = key
                last = self._committed_last.get((unit, gateway))
                if last is None or seq > last[0]:
                    self._committed_last[unit, gateway] = (seq, digest)

    def discard(self, token: int) -> None:
        """Group ``token`` was not stored: forget it."""
        with self._lock:
            self._pending.pop(token, None)

    def _remember(self, key: BatchKey, digest: bytes) -> None:
        self._stored[key] = digest
        while len(self._stored) > self._cache_size:
            del self._stored[next(iter(self._stored))]


class GapWatch:
    """Gateways whose stored seqs have holes, and the resend requests they are owed.

    ``note`` a gateway (a batch arrived ``after_gap``, or its inventory shows gaps): it is
    ``due`` ``grace`` seconds later — time for a batch still travelling through another
    collector of the shared subscription to land. For a due gateway the caller reads its
    missing ranges and passes them to ``plan``, which returns the ranges to request now (none
    requested within ``interval``) and looks at the gateway again ``interval`` later; a gateway
    without missing ranges is forgotten. Times are seconds on any monotonic clock.
    """

    def __init__(self, grace: float, interval: float) -> None:
        self.grace = grace
        self.interval = interval
        self._due: dict[Gateway, float] = {}
        self._sent: dict[Gateway, dict[SeqRange, float]] = {}

    def __len__(self) -> int:
        return len(self._due)

    def note(self, gateway: Gateway, now: float) -> None:
        """Look at ``gateway``'s gaps ``grace`` from now (or earlier, if already due)."""
        due = now + self.grace
        self._due[gateway] = min(self._due.get(gateway, due), due)

    def due(self, now: float) -> list[Gateway]:
        return [gw for gw, at in self._due.items() if at <= now]

    def plan(self, gateway: Gateway, missing: list[SeqRange], now: float) -> list[SeqRange]:
        """The ranges of ``missing`` to request now; reschedules or forgets ``gateway``."""
        wanted = set(missing)
        sent = {r: at for r, at in self._sent.pop(gateway, {}).items()
                if r in wanted and now - at < self.interval}
        if not missing:
            self._due.pop(gateway, None)
            return []
        if sent:
            self._sent[gateway] = sent
        self._due[gateway] = now + self.interval
        return [r for r in missing if r not in sent]

    def sent(self, gateway: Gateway, seqs: SeqRange, now: float) -> None:
        """A request for ``seqs`` went out."""
        self._sent.setdefault(gateway, {})[seqs] = now

    def retry_later(self, gateway: Gateway, now: float) -> None:
        """The gaps could not be read (database unavailable): look again after ``grace``."""
        self._due[gateway] = now + self.grace
