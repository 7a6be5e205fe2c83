"""The collector's MQTT 5 connection: paho-mqtt with manual acknowledgement, driven by asyncio.

One :class:`IngestLink` is one connection attempt and, once CONNACK arrived, the session on
it; reconnecting (with back-off) is the ingest's business, with a new ``IngestLink`` each time.

How it runs — ``paho.Client.connect`` once in the default executor, then the socket registered
with ``loop.add_reader``/``add_writer`` (paho's "external event loop" mode), and
:meth:`IngestLink.watch` calling ``loop_misc`` (paho's keepalive) and dropping a link from which
nothing arrived for 1.5 x keepalive — is shared with the gateway and lives in
``protocol._mqtt_loop``.

Acknowledgement: the client is built with ``manual_ack=True``, so paho sends no PUBACK by itself;
:meth:`IngestLink.ack` sends the PUBACK of a QoS 1 message when the ingest says so (after the
database committed it, in the order the messages arrived). Packet ids belong to a connection: an
``Incoming`` remembers the link it came on, and a message whose link has ended is never
acknowledged on another one (the broker sends it again on the next connection of the session).

Flow control, two layers:

* **Receive Maximum** (MQTT 5, 3.1.2.11.3) announced in CONNECT: the broker sends at most that
  many QoS 1 messages not yet acknowledged; the rest wait at the broker (in the session's
  queue, bounded there by the broker's own settings, e.g. Mosquitto's ``max_queued_messages``).
* **Pausing the socket**: :meth:`IngestLink.pause` stops reading (``remove_reader``), so TCP's
  window closes and the broker stops writing; :meth:`IngestLink.resume` reads again, first what
  TLS already decrypted (the selector cannot see those bytes). A pause longer than the keepalive
  costs the connection (the PINGRESP is not read); nothing is lost by that: what was not
  acknowledged comes again on the next connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from protocol._mqtt_loop import PahoLoopLink
from protocol._mqtt_tls import ClientTlsContext

__all__ = ["VIA_PROPERTY", "Incoming", "IngestLink", "LinkError", "via_of"]

VIA_PROPERTY = "kemon-via"   # MQTT 5 user property of relayed messages: the path, space-separated


class LinkError(Exception):
    """The connection could not be made, or it ended; ``reason`` is one line for a log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message as it arrived: acknowledge ``mid`` (when ``qos`` is 1) on ``link`` only."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    link: IngestLink
    via: tuple[str, ...] = ()      # relayed: the levels it came through (``kemon-via``)


class IngestLink(PahoLoopLink[bool]):
    """One MQTT 5 connection of the collector (see the module docstring).

    :meth:`connect` returns CONNACK's session-present flag; the session is persistent (clean
    start off, expiry ``session_expiry`` seconds; MQTT 5, 3.1.2.4 and 3.1.2.11.2).
    """

    def __init__(self, *, name: str, host: str, port: int, client_id: str, keepalive: int,
                 tls: ClientTlsContext | None, session_expiry: int, receive_maximum: int,
                 on_message: Callable[[Incoming], None]) -> None:
        super().__init__(name=name, host=host, port=port, client_id=client_id,
                         keepalive=keepalive, tls=tls, session_expiry=session_expiry,
                         receive_maximum=receive_maximum)
        self._on_message = on_message

    # --- the ingest's side -------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return self._paused

    async def subscribe(self, filters: Sequence[tuple[str, SubscribeOptions]],
                        seconds: float) -> None:
        """SUBSCRIBE to ``filters`` in one packet; ``LinkError`` when one is refused."""
        rc, mid = self._client.subscribe(list(filters))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {mqtt.error_string(rc)}")
        future = self._suback[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                pending: set[asyncio.Future[Any]] = {future, self._closed}
                done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise LinkError(f"no SUBACK within {seconds:g} s") from None
        finally:
            self._suback.pop(mid, None)
        if future not in done:
            raise LinkError(self._closed.result())
        refused = [f"{name} ({code})" for (name, _), code in zip(filters, future.result(),
                                                                  strict=False)
                   if code.is_failure]
        if refused:
            raise LinkError(f"the broker refused the subscription to {', '.join(refused)}")

    def publish(self, topic: str, payload: bytes) -> bool:
        """Queue a QoS 1 PUBLISH (its PUBACK is not awaited); False when not connected."""
        if not self.connected:
            return False
        info = self._client.publish(topic, payload, qos=1)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack(self, message: Incoming) -> bool:
        """PUBACK ``message`` (QoS 1) if it arrived on this link and the link is up; True when
        sent (a QoS 0 message needs none and counts as done)."""
        if message.link is not self or not self.connected:
            return False
        if message.qos == 0:
            return True
        return self._client.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def pause(self) -> None:
        """Stop reading from the socket (backpressure: TCP's window closes)."""
        if self._paused:
            return
        self._paused = True
        if self._sock is not None and self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock)

    def resume(self) -> None:
        """Read again: what TLS already holds now, the socket as it becomes readable."""
        if not self._paused:
            return
        self._paused = False
        self.last_in = time.monotonic()
        if self._sock is not None and not self._closed.done():
            self._loop.add_reader(self._sock, self._readable)
            self._loop.call_soon(self._readable)

    # --- the hooks of PahoLoopLink -----------------------------------------------------------

    def _connack_value(self, flags: mqtt.ConnectFlags, properties: Properties | None) -> bool:
        return bool(flags.session_present)

    def _link_error(self, reason: str, *, connected: bool) -> LinkError:
        return LinkError(reason)

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        self._on_message(Incoming(message.topic, bytes(message.payload), message.mid,
                                  message.qos, self, via_of(message.properties)))


def via_of(properties: Properties | None) -> tuple[str, ...]:
    """The relay path a message's ``kemon-via`` user property names (empty when none)."""
    pairs = getattr(properties, "UserProperty", None) or ()
    for name, value in pairs:
        if name == VIA_PROPERTY:
            return tuple(str(value).split()[:8])
    return ()
