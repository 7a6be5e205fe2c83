"""What the collector keeps: the records its verification hands to storage.

A message from ``kemon/v1/{unit}/{gateway}/up/data`` is verified (``collector._verify``) into
either a ``VerifiedBatch`` — stored exactly once, its readings idempotently on
(unit, gateway, point, period, ts) — or a ``Quarantined`` record with the reason, kept for
inspection and counted. A ``GatewayStatus`` comes from ``up/status`` (birth and last will).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import Batch, ColumnBatch, ReadingColumns

__all__ = ["GatewayStatus", "Quarantined", "VerifiedBatch"]


@dataclass(frozen=True, slots=True)
class VerifiedBatch:
    """A batch whose topic, certificate, signature and place in the chain were checked.

    ``payload`` is the sealed bytes exactly as received (relayed upward unchanged);
    ``hash`` is their SHA-256 (the next batch's ``prev``); ``received`` ms since the epoch;
    ``chain``: ``"ok"`` (prev is the hash of the stored seq-1), ``"first"`` (seq 1, or the first
    batch seen from this gateway), ``"after_gap"`` (seqs are missing before it: a resend is
    requested), or ``"duplicate"`` (this very batch is stored already: acknowledge, store
    nothing); ``via``: the relay path it came through (empty when straight from the gateway).

    ``batch`` is a :class:`protocol.ColumnBatch` when the verifier made it (the readings as
    columns; ``batch.readings`` is built only when asked for), or a plain ``Batch``;
    :attr:`columns` gives the columns either way (what storage writes).
    """

    batch: Batch | ColumnBatch
    payload: bytes
    hash: bytes
    received: int
    chain: str = "ok"
    via: tuple[str, ...] = ()

    @property
    def unit(self) -> str:
        return self.batch.unit

    @property
    def gateway(self) -> str:
        return self.batch.gateway

    @property
    def seq(self) -> int:
        return self.batch.seq

    @property
    def count(self) -> int:
        """How many readings the batch holds."""
        b = self.batch
        return b.count if isinstance(b, ColumnBatch) else len(b.readings)

    @property
    def columns(self) -> ReadingColumns:
        """The batch's readings as columns."""
        b = self.batch
        return b.columns if isinstance(b, ColumnBatch) else ReadingColumns.of(b.readings)


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A message that failed verification. ``reason`` is one line (``"signature does not
    verify"``, ``"topic names GW0002 but the batch GW0001"``, …); ``kind`` a short code for
    counting (``size``, ``format``, ``identity``, ``certificate``, ``signature``, ``conflict``
    — another batch with a stored seq —, ``chain``; ``collector._verify.QUARANTINE_KINDS``);
    ``payload`` at most the first 64 KiB of what arrived."""

    topic: str
    reason: str
    kind: str
    payload: bytes
    received: int
    unit: str | None = None
    gateway: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """A gateway's last ``up/status`` message: ``online``/``offline``, its version, and the
    certificate (PEM) it presented in its birth message."""

    unit: str
    gateway: str
    status: str
    received: int
    version: str | None = None
    certificate: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
