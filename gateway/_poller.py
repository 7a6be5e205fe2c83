"""One poller per bus: one transaction at a time on the bus, meters in turn (DESIGN decision 7).

Each meter keeps counters (requests, errors, timeouts, last latency, last good read). After
``offline_after`` consecutive failed polls a meter is *offline*: it is then tried only once per
back-off period (doubling up to ``MAX_BACKOFF_S``) and without retries, so a dead meter costs
the bus one timeout now and then instead of ``(1 + retries)`` timeouts every cycle. A driver
call is also bounded by an overall deadline, so a meter that trickles bytes cannot stall the
meters after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ._model import BusConfig, MeterConfig
from .drivers._base import (
    Driver,
    MeterError,
    MeterExceptionReply,
    MeterTimeout,
    ReadResult,
)

__all__ = ["MAX_BACKOFF_S", "BusPoller", "MeterPoll", "MeterStats"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 900.0


@dataclass(slots=True)
class MeterStats:
    """Per-meter counters, kept for the whole run."""

    requests: int = 0
    errors: int = 0
    timeouts: int = 0
    last_latency_ms: float | None = None
    last_good: float | None = None        # Unix time of the last complete read
    last_error: str | None = None
    consecutive_failures: int = 0
    offline: bool = False
    backoff_s: float = 0.0
    next_attempt: float = 0.0             # monotonic time before which an offline meter waits

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("next_attempt")
        return d


@dataclass(slots=True)
class MeterPoll:
    """The outcome of polling one meter at one tick."""

    meter: MeterConfig
    tick: int
    sampled_at: float                     # Unix time when the answer arrived
    result: ReadResult | None = None
    error: MeterError | None = None
    skipped: bool = False                 # offline and backing off: not tried this tick
    values: dict[str, float] = field(default_factory=dict)


class BusPoller:
    """Polls the meters of one bus through one driver, one transaction at a time."""

    def __init__(self, bus: BusConfig, driver: Driver, *,
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.driver = driver
        self.stats: dict[str, MeterStats] = {}
        self._wall = wall
        self._mono = monotonic
        self._connected = False

    async def poll(self, meters: Sequence[MeterConfig], tick: int) -> list[MeterPoll]:
        """Poll ``meters`` in turn for grid time ``tick``."""
        out: list[MeterPoll] = []
        for meter in meters:
            out.append(await self._poll_one(meter, tick))
        return out

    async def close(self) -> None:
        await self.driver.close()
        self._connected = False

    async def _ensure_connected(self) -> None:
        if not self._connected:
            await self.driver.connect()
            self._connected = True

    async def _poll_one(self, meter: MeterConfig, tick: int) -> MeterPoll:
        st = self.stats.setdefault(meter.name, MeterStats())
        if st.offline and self._mono() < st.next_attempt:
            return MeterPoll(meter, tick, self._wall(), skipped=True)
        attempts = 1 if st.offline else 1 + self.bus.retries
        error: MeterError | None = None
        for attempt in range(attempts):
            started = self._mono()
            try:
                await self._ensure_connected()
                async with asyncio.timeout(self._deadline(meter)):
                    result = await self.driver.read_meter(meter)
            except TimeoutError:
                error = MeterTimeout(meter.name, "no answer before the poll deadline")
                await self._reset_link()
            except MeterError as exc:
                error = exc
                if isinstance(exc, MeterTimeout):
                    await self._reset_link_if_tcp()
            except OSError as exc:
                error = MeterError(meter.name, f"bus {self.bus.name}: {exc}")
                await self._reset_link()
            else:
                st.requests += result.requests
                st.last_latency_ms = round((self._mono() - started) * 1000, 1)
                self._succeeded(meter, st, result)
                return MeterPoll(meter, tick, self._wall(), result=result,
                                 values=dict(result.values))
            st.requests += 1
            self._count_error(st, error)
            if isinstance(error, MeterExceptionReply):
                break          # the meter answered; asking again gives the same answer
            if attempt + 1 < attempts:
                log.debug("%s: retrying after %s", meter.name, error)
        assert error is not None
        self._failed(meter, st, error)
        return MeterPoll(meter, tick, self._wall(), error=error)

    def _deadline(self, meter: MeterConfig) -> float:
        # One bus timeout per point is the most a correct driver can need (DL/T 645 asks per
        # data identifier), plus slack for connecting.
        return self.bus.timeout * (len(meter.points) + 1) + 2.0

    async def _reset_link(self) -> None:
        with contextlib.suppress(OSError):
            await self.driver.close()
        self._connected = False

    async def _reset_link_if_tcp(self) -> None:
        if self.bus.is_tcp and self.bus.kind == "modbus-tcp":
            # A TCP meter that timed out may answer late; a fresh connection drops the stale
            # answer instead of letting it be taken for the next request's.
            await self._reset_link()

    @staticmethod
    def _count_error(st: MeterStats, error: MeterError) -> None:
        st.errors += 1
        if isinstance(error, MeterTimeout):
            st.timeouts += 1
        st.last_error = str(error)

    def _succeeded(self, meter: MeterConfig, st: MeterStats, result: ReadResult) -> None:
        if st.offline:
            log.info("meter %s is back online", meter.name)
        st.consecutive_failures = 0
        st.offline = False
        st.backoff_s = 0.0
        if result.errors:
            st.errors += len(result.errors)
            st.last_error = "; ".join(str(e) for e in result.errors.values())
        else:
            st.last_good = self._wall()

    def _failed(self, meter: MeterConfig, st: MeterStats, error: MeterError) -> None:
        st.consecutive_failures += 1
        if st.offline:
            st.backoff_s = min(MAX_BACKOFF_S, max(st.backoff_s * 2, float(meter.interval)))
        elif st.consecutive_failures >= meter.offline_after:
            st.offline = True
            st.backoff_s = float(meter.interval)
            log.warning("meter %s is offline after %d failed polls: %s", meter.name,
                        st.consecutive_failures, error)
        else:
            log.info("meter %s: %s", meter.name, error)
        if st.offline:
            st.next_attempt = self._mono() + st.backoff_s - 0.5
