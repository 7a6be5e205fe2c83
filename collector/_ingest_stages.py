"""The two stages a group of messages goes through in the ingest (``collector._ingest``), each
called in a worker thread: :meth:`Stages.verify` (statuses recorded and certificates pinned on
the way, batches verified against storage plus the groups in hand) and :meth:`Stages.store`
(one transaction). Acknowledging is the ingest's business, after ``store`` returned.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from protocol import BatchFormatError, peek

from ._ingest_state import GroupLookups
from ._mqtt import Incoming
from ._records import Quarantined, VerifiedBatch
from ._storage import Storage
from ._verify import Verifier

__all__ = ["Outcome", "Prepared", "Stages"]


@dataclass(slots=True)
class Outcome:
    """What one group's processing did (for the counters and the gap watch)."""

    statuses: int = 0
    batches: int = 0
    readings: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)
    gaps: set[tuple[str, str]] = field(default_factory=set)


@dataclass(slots=True)
class Prepared:
    """A group after verification, ready for its one ``store()``."""

    group: list[Incoming]
    token: int
    verified: list[VerifiedBatch]
    quarantined: list[Quarantined]
    outcome: Outcome


@dataclass(slots=True)
class Stages:
    """The two stages a group goes through, each called in a worker thread."""

    writer: Storage
    verifier: Verifier
    lookups: GroupLookups

    def verify(self, group: Sequence[Incoming], token: int) -> Prepared:
        """Verify each message; record statuses and pin certificates on the way (their own
        short transactions, before the data that follows them is verified)."""
        out = Outcome()
        verified: list[VerifiedBatch] = []
        quarantined: list[Quarantined] = []
        try:
            with self.lookups.prefetched(_batch_keys(group)):
                self._verify_each(group, token, out, verified, quarantined)
        except BaseException:
            self.lookups.discard(token)
            raise
        out.batches = len(verified)
        out.quarantined.update(q.kind for q in quarantined)
        return Prepared(list(group), token, verified, quarantined, out)

    def _verify_each(self, group: Sequence[Incoming], token: int, out: Outcome,
                     verified: list[VerifiedBatch], quarantined: list[Quarantined]) -> None:
        """Stage 1's loop: each message's verdict into ``out``, ``verified``,
        ``quarantined``."""
        storage, verifier = self.writer, self.verifier
        for message in group:
            if message.topic.endswith("/up/status"):
                record, pem = verifier.status(message.topic, message.payload)
                if isinstance(record, Quarantined):
                    quarantined.append(record)
                    continue
                if pem is not None:
                    # A re-key (a pin exists and the verifier accepted the newer
                    # certificate) replaces it; a first pin leaves a concurrent one be.
                    replace = storage.pinned_certificate(record.unit, record.gateway) \
                        is not None
                    storage.pin_certificate(record.unit, record.gateway, pem,
                                            replace=replace)
                if not message.via:    # a relay's announcement only brings the
                    storage.record_status(record)    # certificate (collector._relay)
                out.statuses += 1
                continue
            result = verifier.batch(message.topic, message.payload)
            if message.via and isinstance(result, VerifiedBatch):
                result = dataclasses.replace(result, via=message.via)
            if isinstance(result, Quarantined):
                quarantined.append(result)
            elif result.chain == "duplicate":
                out.duplicates += 1
            else:
                verified.append(result)
                self.lookups.add(token, result)
                if result.chain == "after_gap":
                    out.gaps.add((result.unit, result.gateway))

    def store(self, prepared: Prepared) -> int:
        """ONE transaction: the group's new batches and quarantined messages; how many
        readings were newly stored."""
        if not prepared.verified and not prepared.quarantined:
            return 0
        return self.writer.store(prepared.verified, prepared.quarantined)


def _batch_keys(group: Sequence[Incoming]) -> list[tuple[str, str, int]]:
    """(unit, gateway, seq) of each data message whose header reads (what verifying it will
    look up; one that does not read is quarantined by the verifier, not looked up)."""
    keys = []
    for message in group:
        if message.topic.endswith("/up/data"):
            try:
                header = peek(message.payload)
            except BatchFormatError:          # the verifier quarantines it, saying why
                continue
            keys.append((header.unit, header.gateway, header.seq))
    return keys
