"""The seam between the store's outbox and one destination's uplink.

The sealer (``gateway._sealer``) turns stored readings into numbered, signed batches kept in
the store's ``batch`` table. Each ``[[destination]]`` has an ``Uplink`` (``gateway._uplink``)
that publishes those batches in ``seq`` order from its own durable cursor and acknowledges
them here only when the broker's PUBACK for each has arrived. Every call is synchronous and
fast (SQLite in the same thread as the event loop); the uplink never blocks on it for long.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["OutboxLike"]


class OutboxLike(Protocol):
    def acked_seq(self, destination: str) -> int:
        """The highest seq this destination has acknowledged, all below it too (0: none)."""

    def batches_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` sealed batches with a seq above ``seq``, in seq order:
        ``(seq, payload)`` where ``payload`` is the exact MQTT payload to publish."""

    def last_seq(self) -> int:
        """The highest seq sealed so far (0: none)."""

    def ack(self, destination: str, seq: int) -> None:
        """Record durably that ``destination`` has every batch up to ``seq``. Called with
        increasing seqs; may be called less often than once per batch (the uplink groups
        acknowledgements, e.g. every 100 ms): a crash then resends a few, never loses one."""
