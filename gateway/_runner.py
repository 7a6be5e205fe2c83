"""The gateway's main loop: bus pollers on the clock grid, one writer, one transaction per cycle.

::

    bus task (one per bus) ──(tick, polls)──► queue ──► writer ──► Store.append_cycle
      sleeps to the next grid tick             │          readings + consumption (tracker)
      polls its due meters in turn             │          + tracker state, in ONE transaction
                                               └─ bounded: a stalled disk blocks the pollers
                                                  instead of growing memory

Buses run in parallel; within a bus one transaction at a time. The writer takes everything
that has arrived for a tick (all buses report within moments of each other) and commits it
together. Stopping (SIGTERM) cancels the bus tasks, writes what was already read, and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from protocol import Period, Quality, Reading
from protocol._sd_notify import feed_watchdog, notify, watchdog_seconds

from ._clock import clock_synchronised
from ._consumption import ConsumptionTracker
from ._instance import InstanceLock
from ._model import BusConfig, GatewayConfig, MeterConfig
from ._poller import BusPoller, MeterPoll
from ._schedule import GRID_TOLERANCE_S, due_meters, next_tick_of
from ._store import Store, StoreError
from .drivers import open_driver
from .drivers._base import Driver

if TYPE_CHECKING:
    from ._delivery import Delivery

__all__ = ["Gateway", "polls_to_readings"]

log = logging.getLogger(__name__)

_PRUNE_EVERY_S = 3600.0
_Cycle = tuple[list[MeterPoll], bool]   # one bus's polls of one tick, and the clock was in sync
_GATHER_S = 0.25          # how long the writer waits for other buses' polls of the same tick
_MAX_PENDING = 500_000    # readings held in memory while the store cannot take them


def polls_to_readings(polls: Sequence[MeterPoll], tracker: ConsumptionTracker,
                      synchronised: bool) -> list[Reading]:
    """Instant readings of successful polls, and the consumption they complete. A value
    outside its point's ``plausible`` bounds is stored as read with quality ``out_of_range``."""
    out: list[Reading] = []
    for poll in polls:
        if not poll.values:
            continue
        late = abs(poll.sampled_at - poll.tick) > GRID_TOLERANCE_S
        ts = round(poll.sampled_at * 1000) if late else poll.tick * 1000
        if not synchronised:
            quality = Quality.CLOCK_UNSYNCED
        elif late:
            quality = Quality.LATE
        else:
            quality = Quality.GOOD
        for point in poll.meter.points:
            value = poll.values.get(point.code)
            if value is None:
                continue
            if point.plausible and not point.plausible[0] <= value <= point.plausible[1]:
                # kept as read, flagged; a counter's consumption skips it (the tracker
                # bridges the gap as for a missed poll)
                out.append(Reading(point.code, Period.INSTANT, ts, value,
                                   quality if not synchronised else Quality.OUT_OF_RANGE))
                continue
            out.append(Reading(point.code, Period.INSTANT, ts, value, quality))
            if point.counter and synchronised:
                out.extend(tracker.feed(point.code, ts, value))
    return out


async def _cancel_all(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again while any survives: Python 3.11's
    ``asyncio.wait_for`` (inside pymodbus) swallows a cancellation that arrives just as the
    answer it waits for does (CPython gh-86296, fixed in 3.12)."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.5)


class Gateway:
    """Runs the acquisition side of a gateway until ``stop`` is set."""

    def __init__(self, config: GatewayConfig, *,
                 clock_check: Callable[[], bool] = clock_synchronised,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 driver_factory: Callable[[BusConfig], Driver] = open_driver) -> None:
        self.config = config
        self._clock_check = clock_check
        self._wall = wall
        self._sleep = sleep
        self._driver_factory = driver_factory
        self.pollers: dict[str, BusPoller] = {}
        self.cycles = 0
        self.store_error: StoreError | None = None
        self.delivery: Delivery | None = None

    @property
    def store_path(self) -> Any:
        return self.config.gateway.data_dir / "store.db"

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        try:
            cfg.gateway.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(cfg.gateway.data_dir,
                             f"cannot create the data directory: {exc.strerror or exc}") from None
        with InstanceLock(cfg.gateway.data_dir):     # one gateway per data directory
            await self._run(stop)

    async def _run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        store = Store(self.store_path, retention_days=cfg.store.retention_days,
                      disk_budget_bytes=cfg.store.disk_budget_mb * 1024 * 1024,
                      full_resolution_days=cfg.store.full_resolution_days)
        try:
            try:
                store.register_points(cfg.meters)
            except StoreError as exc:     # e.g. a full disk: readings intern their points later
                self._store_failed(exc, [])
            tracker = ConsumptionTracker.for_meters(cfg.meters, store.load_state("consumption"))
            queue: asyncio.Queue[_Cycle] = asyncio.Queue(maxsize=64)
            if cfg.destinations:
                from ._delivery import Delivery

                self.delivery = Delivery(cfg, store)
            async with asyncio.TaskGroup() as tg:
                uplink_tasks = self.delivery.start(tg) if self.delivery else []
                bus_tasks = []
                for bus in cfg.buses:
                    meters = [m for m in cfg.meters if m.bus == bus.name]
                    if not meters:
                        continue
                    poller = BusPoller(bus, self._driver_factory(bus), wall=self._wall)
                    self.pollers[bus.name] = poller
                    bus_tasks.append(tg.create_task(self._bus_loop(poller, meters, queue),
                                                    name=f"kemon.bus[{bus.name}]"))
                writer = tg.create_task(self._writer(store, tracker, queue),
                                        name="kemon.writer")
                log.info("gateway %s polling %d meters on %d buses", cfg.gateway.id,
                         len(cfg.meters), len(bus_tasks))
                watchdog = watchdog_seconds()
                feeder = tg.create_task(feed_watchdog(watchdog), name="kemon.watchdog") \
                    if watchdog else None
                notify("READY=1", f"STATUS=polling {len(cfg.meters)} meters on "
                       f"{len(bus_tasks)} buses")
                await stop.wait()
                log.info("stopping: finishing the current cycle")
                notify("STOPPING=1")
                if feeder is not None:
                    feeder.cancel()
                await _cancel_all(bus_tasks)
                await queue.join()
                writer.cancel()
                for task in uplink_tasks:      # each says goodbye (offline) and saves its cursor
                    task.cancel()
        finally:
            for poller in self.pollers.values():
                with contextlib.suppress(Exception):
                    await poller.close()
            store.close()
        log.info("stopped after %d cycles", self.cycles)

    async def _sleep_until(self, meters: Sequence[MeterConfig]) -> int:
        """Sleep to the next grid tick of ``meters`` by the wall clock and return it.

        Sleeps in short steps so a clock step (NTP correcting a 1970 boot) is noticed: the tick
        is recomputed whenever it lies further ahead than the longest interval.
        """
        longest = max(m.interval for m in meters)
        tick = next_tick_of(meters, self._wall())
        while True:
            delay = tick - self._wall()
            if delay <= 0:
                return tick
            if delay > longest + 1:
                tick = next_tick_of(meters, self._wall())
                continue
            await self._sleep(min(delay, 5.0))

    async def _bus_loop(self, poller: BusPoller, meters: Sequence[MeterConfig],
                        queue: asyncio.Queue[_Cycle]) -> None:
        while True:
            tick = await self._sleep_until(meters)
            due = due_meters(meters, tick)
            # The clock must be trusted both before and after the transactions: a clock stepped
            # in between (NTP correcting a 1970 boot) makes every stamp of the cycle suspect.
            synced = self._synchronised()
            polls = await poller.poll(due, tick)
            await queue.put((polls, synced and self._synchronised()))

    async def _writer(self, store: Store, tracker: ConsumptionTracker,
                      queue: asyncio.Queue[_Cycle]) -> None:
        last_prune = 0.0
        pending: list[Reading] = []      # readings the store could not take yet
        while True:
            batch = [await queue.get()]
            deadline = time.monotonic() + _GATHER_S
            while time.monotonic() < deadline:
                try:
                    batch.append(queue.get_nowait())
                except asyncio.QueueEmpty:
                    await asyncio.sleep(0.02)
            try:
                for polls, synchronised in batch:
                    pending.extend(polls_to_readings(polls, tracker, synchronised))
                stats = {name: {m: s.as_json() for m, s in p.stats.items()}
                         for name, p in self.pollers.items()}
                state: dict[str, Any] = {"consumption": tracker.state(), "meters": stats}
                if self.delivery:
                    state["uplinks"] = self.delivery.status()
                try:
                    store.append_cycle(pending, state)
                except StoreError as exc:
                    self._store_failed(exc, pending)
                else:
                    if self.store_error is not None:
                        log.warning("store writable again: %d held readings stored",
                                    len(pending))
                        self.store_error = None
                    pending = []
                    self.cycles += 1
                    if self.delivery:
                        self.delivery.seal()
                    log.debug("cycle %d stored", self.cycles)
                if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    try:
                        if self.delivery:
                            self.delivery.prune()
                        else:
                            store.prune()
                    except StoreError as exc:
                        log.error("pruning the store failed: %s", exc)
            finally:
                for _ in batch:
                    queue.task_done()

    def _synchronised(self) -> bool:
        return self._clock_check() if self.config.gateway.require_time_sync else True

    def _store_failed(self, exc: StoreError, pending: list[Reading]) -> None:
        """Keep the readings in memory (bounded) and say so once per kind of failure."""
        if self.store_error is None or type(self.store_error) is not type(exc):
            log.error("cannot store readings: %s; holding them in memory and retrying "
                      "every cycle", exc)
        self.store_error = exc
        if len(pending) > _MAX_PENDING:
            dropped = len(pending) - _MAX_PENDING
            del pending[:dropped]
            log.error("memory hold full: %d oldest readings dropped", dropped)
