"""Relay to the next level (province → national, 数据对接): every stored batch, unchanged.

    Relay.run(stop)                           kemon.relay[<upstream>]
     ├─ lease           one process per database relays to an upstream (Storage.relay_lease)
     └─ connection loop (tenacity back-off)
         └─ one session per connection
             ├─ publisher   relay_batches_after(cursor) → PUBLISH QoS 1, window ≤ max_inflight,
             │              each gateway's certificate announced before its first batch
             ├─ acks        storage.relay_ack(upstream, cursor) at most every 100 ms
             ├─ requests    down/resend from the upstream → stored copies, sent again
             └─ watch       paho keepalive + silence watchdog

Application-level, not a broker bridge: a bridge guarantees delivery per hop only and drops
messages when its queue is full. Here the cursor (``relay_cursor``: the last ``batch.id``
acknowledged) lives in the collector's database and moves only over the prefix of batches the
upstream broker has PUBACKed with success; a national outage of any length leaves the batches
in the database and a restart sends again exactly what was not acknowledged. Row ids grow in
commit order (``collector._storage``), so reading ``id > cursor`` never passes over a batch.

**Unchanged.** A batch goes out as the sealed bytes the gateway signed, to the gateway's own
topic ``kemon/v1/{unit}/{gateway}/up/data``: the national collector verifies the gateway's
signature and hash chain exactly as a province does, and stores a batch it receives both from
the gateway and through a province once (its storage is idempotent on (unit, gateway, seq) and
the hash). The MQTT 5 user property ``kemon-via`` names the relay path (each level appends its
region code); the receiving collector records it (``batch.via``).

**Certificates.** The upstream verifies with the gateway's certificate, which it learns from a
status message. Before a gateway's first batch on each connection (and again after the gateway
re-keyed) the relay publishes ``{"status": "online", "unit", "gateway", "version",
"certificate"}`` — the certificate this collector pinned — to ``up/status``, not retained
(the gateway's own retained birth at the upstream broker, if it reports there directly, is
left alone) and marked with ``kemon-via``. The receiving collector pins the certificate from it
and leaves the gateway's online/offline state to the gateway's own messages. QoS 1 messages on
one connection reach a subscriber in order, so the certificate arrives before the batches.

**What counts as delivered.** A PUBACK with a failure reason code (0x87 not authorized: the
upstream's ACL) is not: the session ends and is retried with back-off. Neither is 0x10 "no
matching subscribers": the upstream broker accepted the batch but nobody will store it (its
collectors have never subscribed), so the relay waits and sends it again rather than moving
past it.

**Resend requests.** The upstream asks for missing seqs on ``kemon/v1/{unit}/{gateway}/
down/resend`` (``{"from_seq": a, "to_seq": b}``); the relay subscribes to those and answers
from its own database with the stored copies (outside the cursor). The gateway, if it reports
to the upstream directly, answers as well; duplicates are stored once.

**One relay per upstream.** Several collector processes may share a database; only the one
holding the upstream's lease (a file lock on SQLite, an advisory lock on PostgreSQL) relays,
and another takes over when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from protocol import parse_topic, topic, topic_filter
from protocol._mqtt_publish import (
    LinkError,
    MqttLink,
    keep_connecting,
    link_ended,
    tls_for,
)
from protocol._publish_flow import AckWindow, TokenBucket

from ._broker import broker_address, client_id_for
from ._model import CollectorConfig, UpstreamConfig
from ._mqtt import VIA_PROPERTY
from ._storage import (
    PinnedCertificate,
    RelayBatch,
    Storage,
    StorageError,
    StorageUnavailableError,
    open_storage,
)

__all__ = ["Relay", "RelayCounters"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

SESSION_EXPIRY = 86_400          # seconds the upstream broker keeps our session
RECEIVE_MAXIMUM = 16             # resend requests the upstream may have in flight to us
ACK_PERIOD = 0.1                 # seconds between stores of the cursor
READ_AHEAD = 256                 # batches read from the database at once
MAX_RESEND = 1_000               # batches answered per resend request at most
MAX_EXTRAS = 10_000              # resend copies queued at most (older requests wait)
HEALTHY_AFTER = 30.0             # a connection up this long resets the back-off
LEASE_CHECK = 5.0                # seconds between looks at the lease
IDLE_POLL = 1.0                  # seconds between looks at the database when idle
_NO_SUBSCRIBERS = 0x10           # MQTT 5, 3.4.2.1: PUBACK "No matching subscribers"


@dataclass(slots=True)
class RelayCounters:
    """What one relay did since it started (read by the collector's report and the tests)."""

    relayed: int = 0                 # batches acknowledged by the upstream (cursor moved over)
    statuses: int = 0                # certificate announcements acknowledged
    resent: int = 0                  # copies sent in answer to resend requests
    requests: int = 0                # resend requests received
    refusals: int = 0                # PUBACKs with a failure code (or no subscribers)
    connections: int = 0
    cursor: int = 0                  # the last batch.id acknowledged
    leader: bool = False             # holds the lease (relays) or waits for it

    def line(self) -> str:
        return (f"relayed {self.relayed} batches (cursor {self.cursor}), {self.statuses} "
                f"certificates, {self.resent} resent for {self.requests} requests, "
                f"{self.refusals} refused, {self.connections} connections")


@dataclass(slots=True)
class _Out:
    """What one unacknowledged PUBLISH carried."""

    kind: str                        # "batch" | "copy" | "status"
    row_id: int = 0                  # batch.id ("batch" only)
    copy: RelayBatch | None = None   # what a "copy" carried (queued again if not acknowledged)


@dataclass(slots=True)
class _Session:
    """One connection's state: what is out, what the upstream has been told."""

    link: MqttLink
    cap: int
    inflight: dict[int, _Out] = field(default_factory=dict)
    ahead: deque[RelayBatch] = field(default_factory=deque)
    announced: set[tuple[str, str]] = field(default_factory=set)
    refusal: str | None = None
    progressed: bool = False


class Relay:
    """Relays this collector's stored batches to one ``[[upstream]]`` (module docstring).

    ``storage`` is the relay's own connection (not shared with ingest: reading and writing must
    not wait for each other); the relay closes it. ``me`` is this level's name on the relay
    path (the collector's region code).
    """

    def __init__(self, upstream: UpstreamConfig, storage: Storage, *, me: str,
                 client_id: str, retry_wait: float = 1.0, retry_max: float = 60.0,
                 connect_timeout: float = 10.0) -> None:
        self.upstream = upstream
        self.name = f"kemon.relay[{upstream.name}]"
        self.counters = RelayCounters()
        self._storage = storage
        self._me = me
        self._client_id = client_id
        self._host, self._port, self._tls = broker_address(upstream.url, upstream.insecure)
        self._retry_wait, self._retry_max = retry_wait, retry_max
        self._connect_timeout = connect_timeout
        self._window = AckWindow(0)
        self._persisted = 0
        self._bucket = TokenBucket(upstream.rate_limit,
                                   TokenBucket.burst_for(upstream.rate_limit), time.monotonic())
        self._pins: dict[tuple[str, str], PinnedCertificate] = {}
        self._pins_since = 0
        self._extras: deque[RelayBatch] = deque()
        self._requests: asyncio.Queue[tuple[MqttLink, mqtt.MQTTMessage]] = asyncio.Queue()
        self._kick = asyncio.Event()
        self._session: _Session | None = None
        self.last_error: str | None = None

    @classmethod
    def for_config(cls, cfg: CollectorConfig, upstream: UpstreamConfig,
                   **kwargs: Any) -> Relay:
        """A relay with its own storage connection, named after this collector."""
        storage = open_storage(cfg.collector.database, base_dir=cfg.source.parent)
        client_id = f"{client_id_for(cfg)[:48]}~{upstream.name}"[:64]
        return cls(upstream, storage, me=cfg.collector.region, client_id=client_id, **kwargs)

    @property
    def connected(self) -> bool:
        return self._session is not None and self._session.link.connected

    def notify(self) -> None:
        """New batches were stored: look now rather than at the next poll."""
        self._kick.set()

    # --- the whole ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set; then flush the cursor, disconnect, close storage."""
        try:
            while not stop.is_set():
                if not await self._hold_lease(stop):
                    return
                try:
                    await self._while_leader(stop)
                except Exception:
                    # A bug, not an outage: say so loudly, but never let it stop the ingest.
                    log.exception("%s: relaying failed; starting again in %.0f s", self.name,
                                  self._retry_max)
                    await _wait(stop, self._retry_max)
        finally:
            await self._flush_acks()
            await asyncio.to_thread(self._storage.close)
            log.info("%s: stopped: %s", self.name, self.counters.line())

    async def _hold_lease(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or ``stop`` is set (False)."""
        said = False
        while not stop.is_set():
            try:
                if await self._db(self._storage.relay_lease, self.upstream.name):
                    self.counters.leader = True
                    self._window = AckWindow(
                        await self._db(self._storage.relay_cursor, self.upstream.name))
                    self._persisted = self.counters.cursor = self._window.acked
                    log.info("%s: relaying to %s from batch id %d", self.name,
                             self.upstream.url, self._window.acked)
                    return True
                if not said:
                    log.info("%s: another collector process relays to %s; standing by",
                             self.name, self.upstream.name)
                    said = True
            except StorageUnavailableError as exc:
                log.warning("%s: %s; trying again", self.name, exc)
            await _wait(stop, LEASE_CHECK)
        return False

    async def _while_leader(self, stop: asyncio.Event) -> None:
        serving = asyncio.create_task(self._connection_loop(), name=f"{self.name}.connection")
        lease = asyncio.create_task(self._watch_lease(stop), name=f"{self.name}.lease")
        try:
            await asyncio.wait({serving, lease}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (serving, lease):
                task.cancel()
            for task in (serving, lease):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.counters.leader = False
        if serving.done() and not serving.cancelled():
            error = serving.exception()
            if error is not None:
                raise error

    async def _watch_lease(self, stop: asyncio.Event) -> None:
        """Returns when ``stop`` is set or the lease is lost (PostgreSQL: a new connection)."""
        while not await _wait(stop, LEASE_CHECK):
            try:
                held = await self._db(self._storage.relay_lease, self.upstream.name)
            except StorageUnavailableError:
                continue            # unknown; the publisher reports the outage
            if not held:
                log.warning("%s: lost the relay lease (another process relays now)", self.name)
                return

    # --- connections ---------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        await keep_connecting(self._connect, name=self.name, retry_wait=self._retry_wait,
                              retry_max=self._retry_max, log=log, on_error=self._failed)

    def _failed(self, reason: str) -> None:
        self.last_error = reason

    async def _connect(self) -> None:
        """One connection, from CONNECT to its end; always ends by raising."""
        up = self.upstream
        tls = tls_for(self._tls, up.ca_file, up.cert_file, up.key_file)
        link = MqttLink(name=self.name, host=self._host, port=self._port,
                        client_id=self._client_id, keepalive=up.keepalive, tls=tls, will=None,
                        session_expiry=SESSION_EXPIRY, receive_maximum=RECEIVE_MAXIMUM,
                        on_puback=self._on_puback,
                        on_message=lambda m: self._requests.put_nowait((link, m)))
        started = time.monotonic()
        try:
            info = await link.connect(self._connect_timeout)
            cap = max(1, min(up.max_inflight, info.receive_maximum))
            session = self._session = _Session(link, cap)
            self._window.restart()
            self._pins.clear()
            self._pins_since = 0
            self.counters.connections += 1
            log.info("%s: connected to %s (in flight ≤ %d, cursor %d)", self.name, up.url,
                     cap, self._window.acked)
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._subscribe(link), name=f"{self.name}.subscribe")
                    tg.create_task(self._publisher(session), name=f"{self.name}.publish")
                    tg.create_task(self._ack_loop(), name=f"{self.name}.acks")
                    tg.create_task(self._request_loop(), name=f"{self.name}.requests")
                    tg.create_task(link.watch(), name=f"{self.name}.watch")
            except ExceptionGroup as group:
                healthy = session.progressed or time.monotonic() - started >= HEALTHY_AFTER
                error = link_ended(group, healthy=healthy, refused=session.refusal is not None,
                                   name=self.name, log=log, on_error=self._failed)
                raise error from None
        finally:
            self._end_session()
            await link.disconnect(1.0)
            await self._flush_acks()

    def _end_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            for out in reversed(session.inflight.values()):
                if out.copy is not None:
                    self._extras.appendleft(out.copy)    # goes again on the next connection
                    self.counters.resent -= 1
        self._window.restart()

    async def _subscribe(self, link: MqttLink) -> None:
        requests = topic_filter("down", kind="resend")
        try:
            reasons = await link.subscribe(requests, self._connect_timeout)
        except TimeoutError:
            log.warning("%s: no SUBACK for %s", self.name, requests)
            return
        if any(reason.is_failure for reason in reasons):
            log.info("%s: the upstream does not let us read %s (%s): resend requests are "
                     "answered by the gateways only", self.name, requests,
                     ", ".join(str(r) for r in reasons))

    # --- publishing ----------------------------------------------------------------------------

    async def _publisher(self, s: _Session) -> None:
        window = self._window
        while True:
            if s.refusal is not None:
                raise LinkError(s.refusal, connected=True)
            if len(s.inflight) >= s.cap:
                self._kick.clear()
                await self._kick.wait()
                continue
            copy = bool(self._extras)
            if not copy and not s.ahead:
                self._kick.clear()
                if not await self._read_ahead(s):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_POLL):
                            await self._kick.wait()
                    continue
                continue
            item = self._extras[0] if copy else s.ahead[0]
            key = (item.unit, item.gateway)
            if key not in s.announced:
                await self._announce(s, key)
                continue           # the window may be full now: look again
            pause = self._bucket.delay(time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            self._bucket.take(time.monotonic())
            if copy:
                self._extras.popleft()
                mid = s.link.publish(_data_topic(item), item.payload,
                                     properties=self._via(item.via))
                s.inflight[mid] = _Out("copy", copy=item)
                self.counters.resent += 1
            else:
                s.ahead.popleft()
                window.sent(item.id)
                mid = s.link.publish(_data_topic(item), item.payload,
                                     properties=self._via(item.via))
                s.inflight[mid] = _Out("batch", row_id=item.id)

    async def _read_ahead(self, s: _Session) -> bool:
        """Fill ``s.ahead`` from the database (then refresh the pins: they are at least as new
        as the batches just read); False when there is nothing new or the database is down."""
        try:
            batches = await self._db(self._storage.relay_batches_after, self.upstream.name,
                                     self._window.sent_upto, READ_AHEAD)
            if batches:
                await self._refresh_pins(s)
        except StorageUnavailableError as exc:
            log.warning("%s: %s; relaying waits", self.name, exc)
            return False
        s.ahead.extend(batches)
        return bool(batches)

    async def _refresh_pins(self, s: _Session) -> None:
        fresh = await self._db(self._storage.pinned_certificates, self._pins_since)
        for pin in fresh:
            key = (pin.unit, pin.gateway)
            old = self._pins.get(key)
            if old is not None and old.pem != pin.pem:
                s.announced.discard(key)           # re-keyed: announce the new certificate
            self._pins[key] = pin
            self._pins_since = max(self._pins_since, pin.pinned)

    async def _announce(self, s: _Session, key: tuple[str, str]) -> None:
        """Publish the gateway's certificate ahead of its batches."""
        pin = self._pins.get(key)
        if pin is None:
            await self._refresh_pins(s)
            pin = self._pins.get(key)
        if pin is None:       # stored batches always have a pin; say so and send them anyway
            log.warning("%s: no certificate pinned for %s/%s; its batches go without one",
                        self.name, *key)
            s.announced.add(key)
            return
        body: dict[str, Any] = {"status": "online", "unit": pin.unit, "gateway": pin.gateway,
                                "certificate": pin.pem}
        if pin.version is not None:
            body["version"] = pin.version
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        mid = s.link.publish(topic(pin.unit, pin.gateway, "up", "status"), payload,
                             properties=self._via(()))
        s.inflight[mid] = _Out("status")
        s.announced.add(key)

    def _via(self, path: Iterable[str]) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [(VIA_PROPERTY, " ".join((*path, self._me)))]
        return props

    def _on_puback(self, mid: int, reason: ReasonCode) -> None:
        s = self._session
        if s is None:
            return
        out = s.inflight.pop(mid, None)
        if out is None:
            return
        self._kick.set()
        if reason.is_failure or reason.value == _NO_SUBSCRIBERS:
            self.counters.refusals += 1
            if out.copy is not None:
                self._extras.appendleft(out.copy)
                self.counters.resent -= 1
            if s.refusal is None:
                what = {"batch": f"batch id {out.row_id}", "copy": "a resent batch",
                        "status": "a certificate announcement"}[out.kind]
                why = ("nobody subscribes to it there: it would not be stored"
                       if reason.value == _NO_SUBSCRIBERS else "not delivered")
                s.refusal = (f"the upstream broker answered {what} with {reason} "
                             f"(0x{reason.value:02x}); {why}")
            return
        if out.kind == "batch":
            s.progressed = True
            self.counters.relayed += 1
            if self._window.acknowledged(out.row_id):
                self.counters.cursor = self._window.acked
        elif out.kind == "status":
            self.counters.statuses += 1

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_PERIOD)
            await self._flush_acks()

    async def _flush_acks(self) -> None:
        acked = self._window.acked
        if acked <= self._persisted:
            return
        try:
            await self._db(self._storage.relay_ack, self.upstream.name, acked)
        except StorageError as exc:
            log.warning("%s: cannot store the cursor at batch id %d: %s", self.name, acked,
                        exc)
            return
        self._persisted = acked

    # --- resend requests from the upstream -------------------------------------------------

    async def _request_loop(self) -> None:
        while True:
            link, message = await self._requests.get()
            await self._answer(message)
            if message.qos > 0:
                link.ack(message.mid)      # after queuing the answer, in arrival order

    async def _answer(self, message: mqtt.MQTTMessage) -> None:
        self.counters.requests += 1
        try:
            where = parse_topic(message.topic)
            doc = json.loads(bytes(message.payload))
            lo, hi = int(doc["from_seq"]), int(doc["to_seq"])
            if where.kind != "resend" or not 1 <= lo <= hi:
                raise ValueError(f"seqs {lo}..{hi}")
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            log.info("%s: ignored a resend request on %s: %s", self.name, message.topic, exc)
            return
        try:
            copies = await self._db(self._storage.stored_batches, where.unit, where.gateway,
                                    lo, min(hi, lo + MAX_RESEND - 1), MAX_RESEND)
        except StorageUnavailableError as exc:
            log.warning("%s: resend request for %s/%s %d..%d not answered: %s", self.name,
                        where.unit, where.gateway, lo, hi, exc)
            return
        room = MAX_EXTRAS - len(self._extras)
        self._extras.extend(copies[:max(0, room)])
        if copies:
            log.info("%s: the upstream asked for %s/%s seq %d..%d: %d stored copies queued",
                     self.name, where.unit, where.gateway, lo, hi, min(len(copies), room))
            self._kick.set()

    # --- plumbing --------------------------------------------------------------------------

    async def _db(self, call: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.to_thread(call, *args)


def _data_topic(batch: RelayBatch) -> str:
    return topic(batch.unit, batch.gateway, "up", "data")


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True when it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()

