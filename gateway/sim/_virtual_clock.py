"""A virtual wall clock for time-lapses and tests: time moves only when everyone sleeps.

``wall()`` returns virtual Unix time; ``sleep(d)`` parks the caller until the virtual time
reaches ``now + d``. A pacer task (``run()``) moves the clock from one wake-up to the next,
pausing ``pause`` real seconds after each so that the work triggered there (a poll over a real
socket, a simulator's answer) completes while the virtual time stands still. A poll therefore
takes no virtual time at all: samples land exactly on their grid ticks, whatever the machine's
load, and an hour of a site passes in seconds.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

__all__ = ["VirtualClock"]


class VirtualClock:
    def __init__(self, start: float, *, pause: float = 0.02, grid: int = 60) -> None:
        self.now = start
        self.pause = pause
        self.grid = grid
        self._waiters: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self.now + max(seconds, 0.0), next(self._seq), fut))
        await fut

    async def run(self) -> None:
        """Advance the clock forever (cancel to stop). Wake-ups on the ``grid`` (poll ticks)
        get the full ``pause``; others (a sleeper checking the clock) a short one."""
        while True:
            await asyncio.sleep(self.pause / 20)
            if not self._waiters:
                continue
            when = self._waiters[0][0]
            self.now = max(self.now, when)
            while self._waiters and self._waiters[0][0] <= self.now:
                _, _, fut = heapq.heappop(self._waiters)
                if not fut.done():
                    fut.set_result(None)
            if abs(self.now / self.grid - round(self.now / self.grid)) < 1e-9:
                await asyncio.sleep(self.pause)
