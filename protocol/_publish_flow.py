"""Pure bookkeeping for a publisher (the gateway's uplink, the collector's relay): which sent
batches are acknowledged, and the pace.

``AckWindow`` records batches in the order they were published and moves the cursor only over
the acknowledged prefix: a PUBACK for seq 12 while seq 11 is still out leaves the cursor at 10.
(A "seq" is any growing number: the gateway's batch seq, the collector's batch row id.)
``TokenBucket`` limits batches per second with a small burst. Neither does I/O nor reads a
clock by itself: times are passed in, so both are tested with plain numbers.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["AckWindow", "TokenBucket"]

_EPSILON = 1e-9     # a token short by less than this is a whole one (float rounding)


class AckWindow:
    """Batches published and not yet acknowledged, over a cursor ``acked``."""

    def __init__(self, acked: int) -> None:
        self.acked = acked
        self.sent_upto = acked
        self._out: OrderedDict[int, bool] = OrderedDict()   # seq -> PUBACKed, in send order

    def __len__(self) -> int:
        return len(self._out)

    def sent(self, seq: int) -> None:
        """``seq`` was published; seqs must grow (they need not be consecutive)."""
        if seq <= self.sent_upto:
            raise ValueError(f"seq {seq} sent after {self.sent_upto}: batches go in seq order")
        self._out[seq] = False
        self.sent_upto = seq

    def acknowledged(self, seq: int) -> bool:
        """Record a PUBACK for ``seq``; True when the cursor moved."""
        if seq not in self._out:
            return False
        self._out[seq] = True
        moved = False
        while self._out:
            first, done = next(iter(self._out.items()))
            if not done:
                break
            self._out.popitem(last=False)
            self.acked = first
            moved = True
        return moved

    def restart(self) -> None:
        """The connection ended: whatever was not acknowledged goes again from the cursor."""
        self._out.clear()
        self.sent_upto = self.acked


class TokenBucket:
    """At most ``rate`` events per second on average, ``burst`` at once."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate {rate} must be > 0 and burst {burst} >= 1")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._when = now

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event may happen (0: now)."""
        self._refill(now)
        missing = 1 - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def take(self, now: float) -> None:
        """Spend one token (call after ``delay`` returned 0)."""
        self._refill(now)
        self._tokens -= 1

    def _refill(self, now: float) -> None:
        if now > self._when:
            self._tokens = min(self.burst, self._tokens + (now - self._when) * self.rate)
            self._when = now

    @staticmethod
    def burst_for(rate: float) -> float:
        """The burst an uplink allows: a tenth of a second's worth, at least 1."""
        return max(1.0, rate / 10)
