"""The collector's ingest: subscribe, verify, store exactly once, acknowledge only after commit.

:func:`run_collector` (or :class:`Ingest` when the caller wants its :class:`Counters`) runs
until ``stop`` is set::

    broker ──PUBLISH──► IngestLink ──► queue (bounded) ──► consumer: a group of messages
      ▲                  (paho on the                        │  verify each (Verifier)
      └──PUBACK, in ─────  event loop)                       │  ONE storage.store(...)
         arrival order,                                      │  (worker threads)
         after COMMIT ◄──────────────────────────────────────┘

Subscriptions (MQTT 5, QoS 1, persistent session: clean start off, a session expiry, a stable
client id): ``$share/<share_group>/kemon/v1/+/+/up/data`` — several collector processes in one
share group split the data — and, not shared, ``kemon/v1/+/+/up/status``: every collector must
see every birth (it carries the certificate batches are verified with) and shared subscriptions
get no retained messages. The status subscription asks for retained messages only when it is new
(Retain Handling 1, MQTT 5 3.8.3.1), so a reconnection does not replay every gateway's birth.

**Why nothing acknowledged is ever lost.** A QoS 1 message stays the broker's responsibility
until it receives our PUBACK; with a persistent session it is sent again on the next connection
if the PUBACK never came (MQTT 5, 4.4). So the PUBACK must leave only after the data is durably
committed. paho-mqtt 2.x can do that: with ``Client(manual_ack=True)`` it sends no PUBACK by
itself and ``client.ack(mid, qos)`` sends one when we say so. aiomqtt 2 (the usual asyncio
wrapper over paho) does not expose that switch: its paho client acknowledges automatically, as
soon as aiomqtt's callback has put the message in its internal queue — before the application
has even seen it. So this module drives paho directly on the event loop (``collector._mqtt``),
the way aiomqtt drives it underneath, with manual acknowledgement on. A group's
messages are acknowledged after ``store()`` returned (SQLite: WAL with ``synchronous=FULL``;
PostgreSQL: COMMIT), in the order they arrived (PUBACKs must follow the PUBLISH order), and
only on the connection they came on (packet ids belong to a connection). A crash at any point
before the PUBACK means the broker sends the message again; storage is idempotent
(``collector._storage``: batches on (unit, gateway, seq, hash), readings on
(unit, gateway, point, period, ts)), so the second copy is recognised as a duplicate and
acknowledged without storing. Duplicates are verified like any batch and acknowledged.

Caveats that belong to the broker: a shared subscription's member that disconnects keeps its
in-flight messages in its own session (Mosquitto does not hand them to another member), so a
collector process must come back with the same client id (derived stably, see
:func:`client_id_for`) before its session expires; and a broker drops messages beyond its
queue limit for an offline session (Mosquitto ``max_queued_messages``), which the gateways'
hash chain then shows as a gap, asked for again below.

**Backpressure.** The queue holds at most ``[collector] queue`` messages. CONNECT announces the
same number as Receive Maximum, so the broker never has more QoS 1 messages unacknowledged with
us than the queue holds (the group in hand included); the rest wait at the broker. Should more
arrive anyway (QoS 0, a broker ignoring the limit), the link stops reading from its socket until
the queue is half empty, so TCP pushes back on the broker instead of memory growing.

**Groups, two stages.** Messages are taken in groups: up to ``group_size``, or what arrived
within ``linger`` seconds of the first. A group is verified in a worker thread (the verifier's
lookups through a database connection of their own), then stored in ONE ``store()``
transaction in another; the next group is verified while the previous one is being stored (the
lookups count a group verified but not yet stored as stored, ``GroupLookups``). Groups are
stored and acknowledged strictly one after the other, in arrival order.

**Storage outages.** If the database is unavailable (``StorageUnavailableError``) nothing is
acknowledged, one line is logged and the same group is tried again with jittered exponential
back-off (tenacity), for as long as it takes; meanwhile the queue fills and backpressure holds
the rest at the broker. Any other storage error is a bug or a broken database: it ends the
ingest (unacknowledged messages come again after a restart).

**Gaps.** A batch verified ``after_gap`` (seqs missing before it) marks its gateway; a few
seconds later (``gap_grace``: a batch may still be on its way through another collector) the
missing ranges (``Storage.missing_seqs``) are requested on ``kemon/v1/{unit}/{gateway}/
down/resend`` as ``{"from_seq": a, "to_seq": b}``, each range at most once per
``resend_interval``, and again while it stays missing. Gateways whose inventory shows gaps at
start-up are looked at too.

**Stopping.** When ``stop`` is set the consumer takes no new message, finishes the group in hand
(stored and acknowledged; abandoned without acknowledgement if the database is unavailable),
then the link sends DISCONNECT — the session keeps whatever was not acknowledged — and storage
is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from protocol import topic, topic_filter
from protocol._mqtt_tls import client_tls_context

from ._broker import broker_address, client_id_for
from ._ingest_stages import Prepared, Stages
from ._ingest_state import Counters, GapWatch, GroupLookups
from ._model import CollectorConfig
from ._mqtt import Incoming, IngestLink, LinkError
from ._relay import Relay
from ._storage import Storage, StorageUnavailableError, open_storage
from ._verify import Verifier

__all__ = ["Counters", "Ingest", "IngestOptions", "client_id_for", "run_collector",
           "tune_gc_for_ingest"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MAX_RECEIVE = 65535          # MQTT 5, 3.1.2.11.3: Receive Maximum is a two-byte integer
_RANGES_PER_CHECK = 16        # missing ranges requested per gateway per look
# The cyclic GC's first threshold: container allocations between young collections. The
# default (700) runs a collection every few hundred readings; a group of 200 batches makes
# ~40,000 reading tuples and as many row tuples, none of them in a cycle.
_GC_YOUNG = 50_000
_GC_OLDER = 20                # young collections per middle one, middle per full one


@dataclass(frozen=True, slots=True)
class IngestOptions:
    """Tuning with sensible defaults (the configuration file does not carry these)."""

    group_size: int = 200              # messages verified and stored in one transaction
    linger: float = 0.05               # seconds a group waits for more after its first message
    session_expiry: int = 86_400       # seconds the broker keeps our session while we are away
    connect_timeout: float = 10.0
    reconnect_wait: float = 0.5        # back-off multiplier (jittered, exponential)
    reconnect_max: float = 30.0
    storage_wait: float = 0.2          # back-off while the database is unavailable
    storage_max: float = 10.0
    gap_grace: float = 5.0             # seconds before a gap is asked for
    resend_interval: float = 60.0      # one request per range per this many seconds
    report_interval: float = 60.0      # counters logged at INFO this often
    disconnect_timeout: float = 5.0


async def run_collector(cfg: CollectorConfig, stop: asyncio.Event, *,
                        options: IngestOptions | None = None) -> None:
    """Run the ingest until ``stop`` is set (see the module docstring).

    Raises ``StorageError`` for a database that cannot be used (other than unavailable, which
    is waited out), ``ValueError``/``OSError`` for unusable certificates or URL.
    """
    await Ingest(cfg, options).run(stop)


def tune_gc_for_ingest() -> None:
    """Set the process's garbage collector for the ingest; ``kemon collector run`` calls it
    once, after start-up, before running the ingest (a process-wide setting, so the process
    entry point decides, not :class:`Ingest`).

    Why: verification builds tens of thousands of short-lived tuples a group (readings, then
    database rows) and CPython's default thresholds (700, 10, 10) answer with a young
    collection every 700 of them and frequent full collections over everything the process
    holds. Measured with bench/bench_ingest.py's stages (SQLite, 400,000 readings): verify
    2.8 → 1.8 µs a reading. None of these objects is in a reference cycle, so collecting
    less often frees nothing later than it would have been freed. ``gc.freeze()`` moves what
    start-up made (modules, classes, the configuration) out of the collector's sight for good.
    """
    gc.freeze()
    gc.set_threshold(_GC_YOUNG, _GC_OLDER, _GC_OLDER)


def load_trusted_cas(paths: Sequence[Path]) -> list[x509.Certificate]:
    """Every certificate in the PEM files ``paths``."""
    cas: list[x509.Certificate] = []
    for path in paths:
        try:
            cas.extend(x509.load_pem_x509_certificates(Path(path).read_bytes()))
        except ValueError as exc:
            raise ValueError(f"{path}: no readable PEM certificate ({exc})") from None
    return cas


class Ingest:
    """One collector's ingest. ``counters`` may be read at any time (tests, benchmarks)."""

    def __init__(self, cfg: CollectorConfig, options: IngestOptions | None = None) -> None:
        self.cfg = cfg
        self.options = options or IngestOptions()
        if self.options.group_size < 1:
            raise ValueError(f"group_size must be positive, not {self.options.group_size}")
        self.counters = Counters()
        self.relays: list[Relay] = []          # one per [[upstream]], once running
        self.client_id = client_id_for(cfg)
        self.name = f"kemon-collector[{self.client_id}]"
        self._host, self._port, self._tls = broker_address(cfg.broker.url, cfg.broker.insecure)
        self._bound = max(1, cfg.collector.queue)
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._link: IngestLink | None = None
        self._gaps = GapWatch(self.options.gap_grace, self.options.resend_interval)
        cas = cfg.collector.trusted_ca or ((cfg.broker.ca_file,) if cfg.broker.ca_file else ())
        self._trusted = load_trusted_cas(cas)
        self._data_filter = f"$share/{cfg.broker.share_group}/{topic_filter('up', kind='data')}"
        self._status_filter = topic_filter("up", kind="status")

    # --- the whole ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        writer = await self._open_storage(stop)
        if writer is None:
            return
        reader: Storage | None = None
        drained = asyncio.Event()
        try:
            # The verifier's lookups go through their own connection, so that verifying the
            # next group does not wait for the transaction storing the previous one.
            reader = await self._open_storage(stop)
            if reader is None:
                return
            lookups = GroupLookups(reader)
            stages = Stages(writer, Verifier(self._trusted, lookups), lookups)
            await self._note_known_gaps(writer)
            for upstream in self.cfg.upstreams:      # each with a storage connection of its own
                self.relays.append(await asyncio.to_thread(
                    Relay.for_config, self.cfg, upstream, retry_wait=self.options.reconnect_wait,
                    retry_max=self.options.reconnect_max,
                    connect_timeout=self.options.connect_timeout))
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._connection(drained), name=f"{self.name}.connection")
                tasks.create_task(self._consume(stop, drained, stages),
                                  name=f"{self.name}.consume")
                tasks.create_task(self._resends(drained, reader), name=f"{self.name}.resend")
                tasks.create_task(self._report(drained), name=f"{self.name}.report")
                for relay in self.relays:
                    tasks.create_task(relay.run(drained), name=relay.name)
        finally:
            log.info("%s: stopped: %s", self.name, self.counters.line())
            await asyncio.to_thread(writer.close)
            if reader is not None:
                await asyncio.to_thread(reader.close)

    async def _open_storage(self, stop: asyncio.Event) -> Storage | None:
        url = self.cfg.collector.database
        base = self.cfg.source.parent
        try:
            return await self._retry_storage(lambda: open_storage(url, base_dir=base), stop,
                                             "opening the database")
        except StorageUnavailableError:
            return None            # stopped before the database came back

    # --- the connection -----------------------------------------------------------------------

    async def _connection(self, drained: asyncio.Event) -> None:
        """Connect, subscribe, keep the link; reconnect with back-off until ``drained``."""
        opts = self.options
        wait = wait_random_exponential(multiplier=opts.reconnect_wait, max=opts.reconnect_max)
        while not drained.is_set():    # a fresh back-off after each connection that worked
            retrying = AsyncRetrying(wait=wait, retry=retry_if_exception_type(LinkError),
                                     stop=lambda _s: drained.is_set(),
                                     sleep=lambda s: _sleep_unless(drained, s),
                                     before_sleep=self._link_down, reraise=True)
            with contextlib.suppress(LinkError):
                async for attempt in retrying:
                    with attempt:
                        await self._session(drained)

    def _link_down(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = exc.reason if isinstance(exc, LinkError) else repr(exc)
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s: %s; reconnecting in %.1f s", self.name, reason, pause)

    async def _session(self, drained: asyncio.Event) -> None:
        """One connection, from CONNECT until it ends (``LinkError``) or ``drained`` is set
        (DISCONNECT; returns)."""
        broker = self.cfg.broker
        try:
            tls = client_tls_context(broker.ca_file, broker.cert_file, broker.key_file) \
                if self._tls else None
        except (OSError, ValueError) as exc:
            raise LinkError(f"cannot load the TLS files: {exc}") from None
        link = IngestLink(name=self.name, host=self._host, port=self._port,
                          client_id=self.client_id, keepalive=broker.keepalive, tls=tls,
                          session_expiry=self.options.session_expiry,
                          receive_maximum=min(self._bound, _MAX_RECEIVE),
                          on_message=self._receive)
        try:
            session = await _unless(drained, link.connect(self.options.connect_timeout))
            if session is None:
                return
            only_if_new = SubscribeOptions.RETAIN_SEND_IF_NEW_SUB
            await link.subscribe([(self._data_filter, SubscribeOptions(qos=1)),
                                  (self._status_filter,
                                   SubscribeOptions(qos=1, retainHandling=only_if_new))],
                                 self.options.connect_timeout)
            self._link = link
            self.counters.connections += 1
            log.info("%s: connected to %s:%d (%s session), receive maximum %d", self.name,
                     self._host, self._port, "resumed" if session else "new",
                     min(self._bound, _MAX_RECEIVE))
            watch = asyncio.create_task(link.watch(), name=f"{self.name}.watch")
            try:
                await _unless(drained, watch)     # raises LinkError when the link ends
            finally:
                watch.cancel()
            await link.disconnect(self.options.disconnect_timeout)
            log.info("%s: disconnected", self.name)
        finally:
            if self._link is link:
                self._link = None
            link.abort("session over")

    def _receive(self, message: Incoming) -> None:
        """A PUBLISH arrived (event loop thread): queue it; stop reading when full."""
        self._queue.put_nowait(message)
        depth = self._queue.qsize()
        self.counters.messages += 1
        self.counters.queue_depth = depth
        if depth >= self._bound and not message.link.paused:
            message.link.pause()
            self.counters.pauses += 1
            log.info("%s: queue full (%d messages): reading paused", self.name, depth)

    # --- the consumer -------------------------------------------------------------------------

    async def _consume(self, stop: asyncio.Event, drained: asyncio.Event,
                       stages: Stages) -> None:
        """Groups through two stages: group k+1 is verified while group k is stored; each
        group is acknowledged after its commit, and only after the group before it."""
        storing: asyncio.Task[bool] | None = None
        token = 0
        try:
            while not stop.is_set():
                group = await self._next_group(stop)
                if not group:
                    continue
                token += 1
                prepared = await self._verify(group, token, stages, stop)
                if storing is not None and not await storing:
                    stages.lookups.discard(token)        # its predecessor was abandoned
                    prepared = None
                storing = None
                if prepared is None:
                    break
                storing = asyncio.create_task(self._store(prepared, stages, stop),
                                              name=f"{self.name}.store")
        finally:
            if storing is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await storing                   # the group in hand: stored, acknowledged
            drained.set()

    async def _next_group(self, stop: asyncio.Event) -> list[Incoming]:
        """The next group: waits for a first message (or ``stop``), then takes what is queued
        and what arrives within ``linger``, up to ``group_size``."""
        queue = self._queue
        if queue.empty():
            first = await _unless(stop, queue.get())
            if first is None:
                return []
            group = [first]
        else:
            group = [queue.get_nowait()]
        size = self.options.group_size
        deadline = asyncio.get_running_loop().time() + self.options.linger
        while len(group) < size:
            if not queue.empty():
                group.append(queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or stop.is_set():
                break
            try:
                async with asyncio.timeout(left):
                    group.append(await queue.get())
            except TimeoutError:
                break
        depth = self.counters.queue_depth = queue.qsize()
        link = self._link
        if link is not None and link.paused and depth <= self._bound // 2:
            link.resume()
            log.info("%s: queue at %d: reading resumed", self.name, depth)
        return group

    async def _verify(self, group: list[Incoming], token: int, stages: Stages,
                      stop: asyncio.Event) -> Prepared | None:
        """Stage 1 (worker thread): verify ``group``; None when stopped while the database
        was unavailable."""
        try:
            return await self._retry_storage(lambda: stages.verify(group, token), stop,
                                             f"verifying {len(group)} messages")
        except StorageUnavailableError:
            log.warning("%s: stopping with %d messages not verified and not acknowledged; "
                        "the broker keeps them for the next run", self.name, len(group))
            return None

    async def _store(self, prepared: Prepared, stages: Stages, stop: asyncio.Event) -> bool:
        """Stage 2 (worker thread): store the group in one transaction (again and again while
        the database is unavailable), then acknowledge it in arrival order. False when stopped
        before it could be stored (nothing acknowledged)."""
        group, out = prepared.group, prepared.outcome
        try:
            out.readings = await self._retry_storage(
                lambda: stages.store(prepared), stop,
                f"storing {len(group)} messages (not acknowledged)")
        except StorageUnavailableError:
            stages.lookups.discard(prepared.token)
            log.warning("%s: stopping with %d messages not stored and not acknowledged; the "
                        "broker keeps them for the next run", self.name, len(group))
            return False
        stages.lookups.commit(prepared.token)
        c = self.counters
        c.groups += 1
        c.statuses += out.statuses
        c.batches_stored += out.batches
        c.readings_stored += out.readings
        c.duplicates += out.duplicates
        for kind, n in out.quarantined.items():
            c.quarantined[kind] = c.quarantined.get(kind, 0) + n
        now = time.monotonic()
        for gateway in out.gaps:
            self._gaps.note(gateway, now)
        for message in group:          # arrival order
            if message.link.ack(message):
                c.acked += 1
        if out.batches:
            for relay in self.relays:
                relay.notify()
        return True

    async def _retry_storage(self, call: Callable[[], _T], stop: asyncio.Event,
                             what: str) -> _T:
        """``call`` in a worker thread, again with back-off while the database is unavailable;
        after ``stop`` the last ``StorageUnavailableError`` is raised."""
        opts = self.options

        def failed(state: RetryCallState) -> None:
            self.counters.storage_failures += 1
            exc = state.outcome.exception() if state.outcome is not None else None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            log.warning("%s: %s: %s; trying again in %.1f s", self.name, what, exc, pause)

        retrying = AsyncRetrying(
            wait=wait_random_exponential(multiplier=opts.storage_wait, max=opts.storage_max),
            retry=retry_if_exception_type(StorageUnavailableError),
            stop=lambda _s: stop.is_set(), sleep=lambda s: _sleep_unless(stop, s),
            before_sleep=failed, reraise=True)
        async for attempt in retrying:
            with attempt:
                return await asyncio.to_thread(call)
        raise AssertionError("unreachable")       # reraise=True: the loop returns or raises

    # --- gaps and the report -----------------------------------------------------------------

    async def _note_known_gaps(self, storage: Storage) -> None:
        try:
            rows = await asyncio.to_thread(storage.gateways)
        except StorageUnavailableError as exc:
            log.warning("%s: cannot read the inventory for gaps: %s", self.name, exc)
            return
        now = time.monotonic()
        for row in rows:
            if row.gaps > 0:
                self._gaps.note((row.unit, row.gateway), now)

    async def _resends(self, drained: asyncio.Event, storage: Storage) -> None:
        """Ask gateways for the seqs they are missing (rate-limited; see ``GapWatch``)."""
        tick = max(0.05, min(1.0, self.options.gap_grace / 2))
        while not await _wait_for(drained, tick):
            for gateway in self._gaps.due(time.monotonic()):
                try:
                    missing = await asyncio.to_thread(storage.missing_seqs, *gateway,
                                                      _RANGES_PER_CHECK)
                except StorageUnavailableError:
                    self._gaps.retry_later(gateway, time.monotonic())
                    continue
                now = time.monotonic()
                for lo, hi in self._gaps.plan(gateway, missing, now):
                    if not self._request_resend(gateway, lo, hi, now):
                        self._gaps.retry_later(gateway, now)    # not connected: soon again

    def _request_resend(self, gateway: tuple[str, str], lo: int, hi: int, now: float) -> bool:
        link = self._link
        unit, gw = gateway
        payload = json.dumps({"from_seq": lo, "to_seq": hi}).encode()
        if link is None or not link.publish(topic(unit, gw, "down", "resend"), payload):
            return False
        self._gaps.sent(gateway, (lo, hi), now)
        self.counters.resend_requests += 1
        log.info("%s: %s/%s is missing batches %d..%d: resend requested", self.name, unit, gw,
                 lo, hi)
        return True

    async def _report(self, drained: asyncio.Event) -> None:
        while not await _wait_for(drained, self.options.report_interval):
            self.counters.queue_depth = self._queue.qsize()
            log.info("%s: %s", self.name, self.counters.line())
            for relay in self.relays:
                if relay.counters.leader:
                    log.info("%s: %s", relay.name, relay.counters.line())


async def _wait_for(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    await _wait_for(event, seconds)


async def _unless(event: asyncio.Event, awaitable: Awaitable[_T]) -> _T | None:
    """Await ``awaitable`` unless ``event`` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(awaitable)
    if event.is_set():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None
