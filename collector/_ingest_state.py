"""The ingest's bookkeeping, without I/O: counters, the lookups a group is verified against,
and which gaps to ask a gateway to resend, when.

* :class:`Counters` — what the ingest has done since it started (logged periodically, read by
  tests and benchmarks).
* :class:`GroupLookups` — the verifier's view of storage while a group of messages is verified
  before its one ``store()`` transaction: the group's own batches count as stored (batch 7
  arriving in the group after batch 6 is ``ok``, not ``after_gap``, and a second copy of batch 6
  in the same group is a ``duplicate``), and stored hashes already seen are remembered (a stored
  batch never changes, so that cache cannot go stale; "not stored" is never cached, since
  another collector process may store it at any moment).
* :class:`GapWatch` — gateways with missing seqs, when to look at them again, and a rate limit
  of one resend request per range per ``interval``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from ._records import VerifiedBatch
from ._verify import Lookups

__all__ = ["Counters", "GapWatch", "GroupLookups"]

Gateway = tuple[str, str]          # (unit, gateway)
SeqRange = tuple[int, int]         # inclusive


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
        self._stored: dict[tuple[str, str, int], bytes] = {}
        self._pending: dict[int, dict[tuple[str, str, int], bytes]] = {}

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        return self._storage.pinned_certificate(unit, gateway)

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        key = (unit, gateway, seq)
        with self._lock:
            found = self._stored.get(key)
            for group in self._pending.values():
                found = found or group.get(key)
        if found is None:
            found = self._storage.batch_hash(unit, gateway, seq)
            if found is not None:
                with self._lock:
                    self._remember(key, found)
        return found

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        best = self._storage.last_batch(unit, gateway)
        with self._lock:
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

    def discard(self, token: int) -> None:
        """Group ``token`` was not stored: forget it."""
        with self._lock:
            self._pending.pop(token, None)

    def _remember(self, key: tuple[str, str, int], digest: bytes) -> None:
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
