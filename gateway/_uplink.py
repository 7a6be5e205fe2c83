"""One destination's uplink: publishes the sealed batches from its own durable cursor over
MQTT 5, never loses one, and comes back after every network failure.

    Uplink.run()                              kemon.uplink[<dest>]
     ├─ connection loop (tenacity back-off)   kemon.uplink[<dest>].connection
     │   └─ one session per connection
     │       ├─ publisher   batches_after(cursor) → PUBLISH QoS 1, window ≤ max_inflight
     │       ├─ acks        outbox.ack(dest, cursor) at most every 100 ms
     │       └─ watch       paho keepalive + silence watchdog (1.5 × keepalive)
     ├─ downlink            down/# → on_downlink(kind, payload), then PUBACK
     └─ wake                the caller's ``wake`` event → publisher

Client library: paho-mqtt 2.x driven by this event loop (``protocol._mqtt_publish`` says why not
aiomqtt: it would count a refused PUBACK as delivered and waits for each PUBACK in turn).

PUBACK tracking: every PUBLISH's packet id maps to the batch it carries. Batches go out in seq
order; ``AckWindow`` moves the cursor only over the prefix whose PUBACKs have all arrived with a
success reason code, and ``outbox.ack`` stores it (grouped, at most every ``ACK_PERIOD``). A
PUBACK with a failure reason code (e.g. 0x87 not authorized) is no acknowledgement: the uplink
logs it, disconnects, backs off and sends the batch again. When a connection ends, whatever was
not acknowledged is sent again from the cursor on the next one (duplicates on the wire carry the
same seq; the collector stores each once).

Resend copies (``republish``) travel on the same connection with the same pacing, outside the
cursor: a copy whose PUBACK does not come is queued again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
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

from ._model import DestinationConfig
from ._outbox_api import OutboxLike

__all__ = ["Uplink"]

log = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600   # seconds the broker keeps our session (and down/# messages)
RECEIVE_MAXIMUM = 16             # downlink messages the broker may have in flight to us
ACK_PERIOD = 0.1                 # seconds between stores of the cursor
READ_AHEAD = 256                 # batches read from the outbox at once
MAX_EXTRAS = 10_000              # resend copies queued at most (republish waits beyond)
HEALTHY_AFTER = 30.0             # a connection up this long resets the back-off
GOODBYE_TIMEOUT = 2.0            # seconds to get the offline status out on a clean stop

Downlink = Callable[[str, bytes], Awaitable[None]]


@dataclass(slots=True)
class _Out:
    """What one unacknowledged PUBLISH carried."""

    seq: int                     # 0 for a status message
    payload: bytes
    extra: bool = False          # a resend copy, outside the cursor
    done: asyncio.Future[ReasonCode] | None = None


class Uplink:
    """Delivers the outbox to one destination. Run one per ``[[destination]]``.

    ``wake`` is an event this uplink owns (it clears it); with several uplinks call
    ``notify()`` on each instead. ``birth`` goes into the retained ``up/status`` message
    (version, certificate PEM, …) with ``"status": "online"`` and ``"ts"`` (ms since epoch).
    """

    def __init__(self, dest: DestinationConfig, *, unit: str, gateway: str,
                 outbox: OutboxLike, birth: Mapping[str, Any],
                 on_downlink: Downlink | None = None, wake: asyncio.Event | None = None,
                 client_id: str | None = None, retry_wait: float = 1.0,
                 retry_max: float = 60.0, connect_timeout: float = 10.0) -> None:
        if not dest.tls and not dest.insecure:
            raise ValueError(f"destination {dest.name}: {dest.url} is plain MQTT; use "
                             "mqtts:// or set insecure = true")
        self.dest = dest
        self.name = dest.name
        self._unit = unit
        self._gateway = gateway
        self._outbox = outbox
        self._birth = dict(birth)
        self._on_downlink = on_downlink
        self._wake = wake
        self._client_id = client_id or f"{gateway}@{unit}:{dest.name}"
        self._retry_wait = retry_wait
        self._retry_max = retry_max
        self._connect_timeout = connect_timeout
        self._data_topic = topic(unit, gateway, "up", "data")
        self._status_topic = topic(unit, gateway, "up", "status")
        self._down_filter = topic_filter("down", unit=unit, gateway=gateway)

        self._window: AckWindow | None = None
        self._persisted = 0
        self._bucket = TokenBucket(dest.rate_limit, TokenBucket.burst_for(dest.rate_limit),
                                   time.monotonic())
        self._inflight: dict[int, _Out] = {}
        self._ahead: deque[tuple[int, bytes]] = deque()
        self._extras: deque[tuple[int, bytes]] = deque()
        self._extras_room = asyncio.Event()
        self._kick = asyncio.Event()            # new batches, a PUBACK, a refusal
        self._refusal: str | None = None
        self._progressed = False
        self._downlink: asyncio.Queue[tuple[MqttLink, mqtt.MQTTMessage]] = asyncio.Queue()
        self._link: MqttLink | None = None
        self.last_error: str | None = None
        self.last_connected: float | None = None

    # --- status (``kemon gateway backlog``) ----------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.connected

    @property
    def acked_seq(self) -> int:
        if self._window is None:
            return self._outbox.acked_seq(self.name)
        return self._window.acked

    # --- the caller's side ---------------------------------------------------------------------

    def notify(self) -> None:
        """New batches were sealed: publish them now rather than at the next poll."""
        self._kick.set()

    async def republish(self, batches: Sequence[tuple[int, bytes]]) -> None:
        """Send extra copies of stored batches to this destination (the cursor does not move).
        Returns once they are queued; they go out, paced, while connected."""
        for item in batches:
            while len(self._extras) >= MAX_EXTRAS:
                self._extras_room.clear()
                await self._extras_room.wait()
            self._extras.append(item)
        self._kick.set()

    async def run(self) -> None:
        """Deliver until cancelled; on cancellation publish ``offline`` and disconnect."""
        self._window = AckWindow(self._outbox.acked_seq(self.name))
        self._persisted = self._window.acked
        prefix = f"kemon.uplink[{self.name}]"
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._connection_loop(), name=f"{prefix}.connection")
                tg.create_task(self._downlink_loop(), name=f"{prefix}.downlink")
                if self._wake is not None:
                    tg.create_task(self._wake_loop(self._wake), name=f"{prefix}.wake")
        finally:
            self._flush_acks()

    # --- connections ---------------------------------------------------------------------------

    async def _connection_loop(self) -> None:
        await keep_connecting(self._session, name=self.name, retry_wait=self._retry_wait,
                              retry_max=self._retry_max, log=log, on_error=self._failed)

    def _failed(self, reason: str) -> None:
        self.last_error = reason

    async def _session(self) -> None:
        """One connection, from CONNECT to its end; always ends by raising."""
        dest = self.dest
        tls = tls_for(dest.tls, dest.ca_file, dest.cert_file, dest.key_file)
        now_ms = int(time.time() * 1000)
        will = json.dumps({"status": "offline", "reason": "connection lost",
                           "connected_at": now_ms}, separators=(",", ":")).encode()
        link = MqttLink(name=self.name, host=dest.host, port=dest.port,
                        client_id=self._client_id, keepalive=dest.keepalive, tls=tls,
                        will=(self._status_topic, will), session_expiry=SESSION_EXPIRY,
                        receive_maximum=RECEIVE_MAXIMUM, on_puback=self._on_puback,
                        on_message=lambda m: self._downlink.put_nowait((link, m)))
        self._link = link
        window = self._window
        assert window is not None
        self._start_session(window)
        try:
            info = await link.connect(self._connect_timeout)
            self.last_connected = time.time()
            started = time.monotonic()
            # One of the broker's Receive Maximum slots stays free for the status messages.
            cap = max(1, min(dest.max_inflight, info.receive_maximum - 1))
            log.info("%s: connected to %s (session present: %s, in flight ≤ %d, cursor %d)",
                     self.name, dest.url, info.session_present, cap, window.acked)
            self._publish_status(link, {**self._birth, "status": "online", "ts": now_ms})
            try:
                async with asyncio.TaskGroup() as tg:
                    prefix = f"kemon.uplink[{self.name}]"
                    tg.create_task(self._subscribe(link), name=f"{prefix}.subscribe")
                    tg.create_task(self._publisher(link, window, cap), name=f"{prefix}.publish")
                    tg.create_task(self._ack_loop(), name=f"{prefix}.acks")
                    tg.create_task(link.watch(), name=f"{prefix}.watch")
            except ExceptionGroup as group:
                self._end_session(window)
                healthy = self._progressed or time.monotonic() - started >= HEALTHY_AFTER
                error = link_ended(group, healthy=healthy, refused=self._refusal is not None,
                                   name=self.name, log=log, on_error=self._failed)
                raise error from None
        except asyncio.CancelledError:
            if link.connected:
                await self._goodbye(link)
            raise
        finally:
            self._end_session(window)
            self._link = None
            await link.disconnect(1.0)
            self._flush_acks()

    def _start_session(self, window: AckWindow) -> None:
        self._flush_acks()
        window.restart()
        self._ahead.clear()
        self._inflight.clear()
        self._refusal = None
        self._progressed = False

    def _end_session(self, window: AckWindow) -> None:
        for out in self._inflight.values():
            if out.extra:
                self._extras.appendleft((out.seq, out.payload))
            if out.done is not None and not out.done.done():
                out.done.cancel()
        self._inflight.clear()
        window.restart()
        self._ahead.clear()

    async def _goodbye(self, link: MqttLink) -> None:
        """Clean stop: retained ``offline``, wait briefly for its PUBACK, then DISCONNECT."""
        done = self._publish_status(link, {"status": "offline", "reason": "stopped",
                                           "ts": int(time.time() * 1000)})
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                await done
        except (TimeoutError, asyncio.CancelledError):
            log.warning("%s: offline status not acknowledged on stop", self.name)

    def _publish_status(self, link: MqttLink,
                        body: Mapping[str, Any]) -> asyncio.Future[ReasonCode]:
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False,
                             default=str).encode()
        done: asyncio.Future[ReasonCode] = asyncio.get_running_loop().create_future()
        mid = link.publish(self._status_topic, payload, retain=True)
        self._inflight[mid] = _Out(0, payload, done=done)
        return done

    async def _subscribe(self, link: MqttLink) -> None:
        try:
            reasons = await link.subscribe(self._down_filter, self._connect_timeout)
        except TimeoutError:
            log.warning("%s: no SUBACK for %s", self.name, self._down_filter)
            return
        if any(reason.is_failure for reason in reasons):
            log.warning("%s: subscription to %s refused: %s", self.name, self._down_filter,
                        ", ".join(str(reason) for reason in reasons))

    # --- publishing ----------------------------------------------------------------------------

    async def _publisher(self, link: MqttLink, window: AckWindow, cap: int) -> None:
        bucket = self._bucket
        while True:
            if self._refusal is not None:
                raise LinkError(self._refusal, connected=True)
            if len(self._inflight) >= cap:
                self._kick.clear()
                await self._kick.wait()
                continue
            extra = bool(self._extras)
            if not extra and not self._ahead:
                self._kick.clear()
                self._ahead.extend(self._outbox.batches_after(window.sent_upto, READ_AHEAD))
                if not self._ahead:
                    try:
                        async with asyncio.timeout(1.0):    # also polls, should a wake be lost
                            await self._kick.wait()
                    except TimeoutError:
                        pass
                    continue
            pause = bucket.delay(time.monotonic())
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            bucket.take(time.monotonic())
            if extra:
                seq, payload = self._extras.popleft()
                self._extras_room.set()
            else:
                seq, payload = self._ahead.popleft()
                window.sent(seq)
            mid = link.publish(self._data_topic, payload)
            self._inflight[mid] = _Out(seq, payload, extra=extra)

    def _on_puback(self, mid: int, reason: ReasonCode) -> None:
        out = self._inflight.pop(mid, None)
        if out is None:
            return
        self._kick.set()
        if out.done is not None and not out.done.done():
            out.done.set_result(reason)
        if reason.is_failure:
            what = f"batch seq {out.seq}" if out.seq else "the status message"
            if self._refusal is None:      # the first one says it; the rest follow from it
                self._refusal = (f"the broker refused {what}: {reason} "
                                 f"(0x{reason.value:02x}); not delivered")
            if out.extra:
                self._extras.appendleft((out.seq, out.payload))
            return
        if out.seq and not out.extra and self._window is not None:
            self._progressed = True
            self._window.acknowledged(out.seq)

    async def _ack_loop(self) -> None:
        while True:
            await asyncio.sleep(ACK_PERIOD)
            self._flush_acks()

    def _flush_acks(self) -> None:
        window = self._window
        if window is None or window.acked <= self._persisted:
            return
        try:
            self._outbox.ack(self.name, window.acked)
        except Exception as exc:
            log.warning("%s: cannot store the cursor at seq %d: %s", self.name, window.acked, exc)
            return
        self._persisted = window.acked

    async def _wake_loop(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            self._kick.set()

    # --- downlink ------------------------------------------------------------------------------

    async def _downlink_loop(self) -> None:
        while True:
            link, message = await self._downlink.get()
            await self._deliver(message)
            if message.qos > 0:
                link.ack(message.mid)      # after handling, in arrival order

    async def _deliver(self, message: mqtt.MQTTMessage) -> None:
        try:
            parsed = parse_topic(message.topic)
        except (ValueError, UnicodeDecodeError) as exc:
            log.warning("%s: ignored a downlink message: %s", self.name, exc)
            return
        if (parsed.direction, parsed.unit, parsed.gateway) != ("down", self._unit,
                                                                self._gateway):
            log.warning("%s: ignored a message on %s: not our downlink", self.name, parsed)
            return
        if self._on_downlink is None:
            log.info("%s: downlink %s ignored: no handler", self.name, parsed.kind)
            return
        try:
            await self._on_downlink(parsed.kind, bytes(message.payload))
        except Exception:
            log.exception("%s: downlink handler failed on %s", self.name, parsed.kind)
