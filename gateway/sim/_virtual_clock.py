"""A virtual wall clock for time-lapses and tests: time moves only when everyone sleeps.

``wall()`` returns virtual Unix time; ``sleep(d)`` parks the caller until the virtual time
reaches ``now + d``. A pacer task (``run()``) moves the clock to the earliest wake-up, wakes
those sleepers, and then waits — in real time — until each of them has gone back to sleep
(finished the work its wake-up started: a poll over a real socket, a simulator's answer)
before moving again. A poll therefore takes no virtual time at all: samples land exactly on
their grid ticks whatever the machine's load, and an hour of a site passes in seconds.
A sleeper that does not come back within ``patience`` real seconds (it ended) is not waited
for again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time

__all__ = ["VirtualClock"]


class VirtualClock:
    def __init__(self, start: float, *, patience: float = 10.0) -> None:
        self.now = start
        self.patience = patience
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._sleeps = 0
        self._slept = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + max(seconds, 0.0), next(self._seq), fut))
        self._sleeps += 1
        self._slept.set()
        await fut

    async def run(self, until: float | None = None) -> None:
        """Advance the clock until ``until`` (virtual Unix time; returns when the next wake-up
        lies beyond it), or forever (cancel to stop)."""
        while True:
            if not self._waiters:
                await asyncio.sleep(0.001)
                continue
            if until is not None and self._waiters[0][0] > until:
                return
            self.now = max(self.now, self._waiters[0][0])
            woken = 0
            while self._waiters and self._waiters[0][0] <= self.now:
                _, _, fut = heapq.heappop(self._waiters)
                if not fut.done():
                    fut.set_result(None)
                    woken += 1
            target = self._sleeps + woken
            deadline = time.monotonic() + self.patience
            while self._sleeps < target and (left := deadline - time.monotonic()) > 0:
                self._slept.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._slept.wait(), left)
