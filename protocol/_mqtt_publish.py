"""A publishing MQTT 5 connection (the gateway's uplink, the collector's relay): paho-mqtt on
the asyncio event loop, with every PUBACK's reason code.

Why paho directly and not aiomqtt: aiomqtt 2.5's ``publish`` awaits each PUBACK and its
``on_publish`` drops the PUBACK's reason code, so a broker's refusal (MQTT 5 reason code
0x87 "Not authorized", sent when the ACL forbids the topic) would count as delivered. Here every
PUBACK reaches ``on_puback(mid, reason_code)`` with its reason code, publishes are pipelined (no
waiting for one PUBACK before the next PUBLISH), and the caller decides what is delivered.

How it runs — connect in the executor, then socket callbacks, ``loop_read``/``loop_write`` and
``loop_misc`` in the event loop's thread, and the watchdog dropping a silent link after
1.5 x keepalive — is shared with the collector's ingest and described in ``protocol._mqtt_loop``.

Each ``MqttLink`` is used for one connection attempt and then discarded; reconnecting is the
caller's business (with its own back-off), so paho never re-sends in-flight messages itself.
Its will (retained, QoS 1) is published by the broker when the link is aborted, and discarded
after a normal ``disconnect``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type
from tenacity.wait import wait_random_exponential

from protocol._mqtt_loop import PahoLoopLink
from protocol._mqtt_tls import ClientTlsContext, client_tls_context

__all__ = ["ConnectInfo", "LinkError", "MqttLink", "Reconnect", "keep_connecting", "link_ended",
           "tls_for"]

#: MQTT 5 (OASIS mqtt-v5.0, 3.2.2.3.3): Receive Maximum absent from CONNACK means 65,535.
DEFAULT_RECEIVE_MAXIMUM = 65535


class LinkError(Exception):
    """The connection could not be made, or it ended. ``reason`` is one line for a log;
    ``connected`` says whether CONNACK had been received (the session had started)."""

    def __init__(self, reason: str, *, connected: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.connected = connected


@dataclass(frozen=True, slots=True)
class ConnectInfo:
    session_present: bool
    receive_maximum: int       # PUBLISHes at QoS 1 the broker accepts unacknowledged at once


class MqttLink(PahoLoopLink[ConnectInfo]):
    """One MQTT 5 connection attempt and, once connected, the session on it."""

    def __init__(self, *, name: str, host: str, port: int, client_id: str, keepalive: int,
                 tls: ClientTlsContext | None, will: tuple[str, bytes] | None,
                 session_expiry: int, receive_maximum: int,
                 on_puback: Callable[[int, ReasonCode], None],
                 on_message: Callable[[mqtt.MQTTMessage], None]) -> None:
        super().__init__(name=name, host=host, port=port, client_id=client_id,
                         keepalive=keepalive, tls=tls, session_expiry=session_expiry,
                         receive_maximum=receive_maximum)
        self._on_puback = on_puback
        self._on_message = on_message
        self._client.max_inflight_messages_set(0)  # 0: no limit in paho; the caller keeps a window
        if will is not None:
            self._client.will_set(will[0], will[1], qos=1, retain=True)
        self._client.on_publish = self._cb_publish

    # --- the caller's side -------------------------------------------------------------------

    @property
    def closed(self) -> asyncio.Future[str]:
        """Resolves with the reason once the connection has ended."""
        return self._closed

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                properties: Properties | None = None) -> int:
        """Queue a QoS 1 PUBLISH; returns its packet id (``on_puback`` gets the same)."""
        if self._closed.done():
            raise LinkError(self._closed.result(), connected=True)
        info = self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkError(f"publish failed: {mqtt.error_string(info.rc)}", connected=True)
        return info.mid

    async def subscribe(self, topic_filter: str, seconds: float) -> list[ReasonCode]:
        """SUBSCRIBE at QoS 1 and wait for the SUBACK's reason codes."""
        rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=1))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkError(f"subscribe failed: {mqtt.error_string(rc)}", connected=True)
        future = self._suback[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                reasons: list[ReasonCode] = await future
                return reasons
        finally:
            self._suback.pop(mid, None)

    def ack(self, mid: int) -> None:
        """PUBACK a received QoS 1 message (manual acknowledgement, in arrival order)."""
        if self.connected:
            self._client.ack(mid, 1)

    # --- the hooks of PahoLoopLink and paho's PUBACK callback --------------------------------

    def _connack_value(self, flags: mqtt.ConnectFlags,
                       properties: Properties | None) -> ConnectInfo:
        receive_maximum = getattr(properties, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)
        return ConnectInfo(flags.session_present, int(receive_maximum))

    def _link_error(self, reason: str, *, connected: bool) -> LinkError:
        return LinkError(reason, connected=connected)

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        self._on_message(message)

    def _cb_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: ReasonCode,
                    _p: Properties | None) -> None:
        try:
            self._on_puback(mid, reason)
        except Exception:
            self._log.exception("%s: PUBACK handler failed", self.name)


class Reconnect(Exception):
    """A healthy connection ended: connect again with the back-off started over."""


async def keep_connecting(session: Callable[[], Awaitable[None]], *, name: str,
                          retry_wait: float, retry_max: float, log: logging.Logger,
                          on_error: Callable[[str], None] | None = None) -> NoReturn:
    """Run ``session()`` (one connection, ending by raising) for ever: after a ``LinkError``
    wait a jittered exponential back-off (``retry_wait`` multiplier, at most ``retry_max``
    seconds) and call it again; after ``Reconnect`` call it again at once with a fresh
    back-off. Each failure is one warning line (and ``on_error(reason)``); anything else
    raised ends the loop."""
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        reason = exc.reason if isinstance(exc, LinkError) else repr(exc)
        pause = state.next_action.sleep if state.next_action is not None else 0.0
        if on_error is not None:
            on_error(reason)
        log.warning("%s: %s; retrying in %.1f s", name, reason, pause)

    wait = wait_random_exponential(multiplier=retry_wait, max=retry_max)
    while True:     # a new AsyncRetrying after a healthy connection: back-off starts over
        retrying = AsyncRetrying(wait=wait, retry=retry_if_exception_type(LinkError),
                                 before_sleep=before_sleep, reraise=True)
        try:
            async for attempt in retrying:
                with attempt:
                    await session()
        except Reconnect:
            continue


def tls_for(tls: bool, ca_file: Path | None, cert_file: Path | None,
            key_file: Path | None) -> ClientTlsContext | None:
    """The client TLS context of a connection (None for plain MQTT); files that cannot be
    loaded are a ``LinkError`` (the connection fails and is tried again)."""
    if not tls:
        return None
    try:
        return client_tls_context(ca_file, cert_file, key_file)
    except (OSError, ValueError) as exc:
        raise LinkError(f"cannot load the TLS files: {exc}") from None


def link_ended(group: BaseExceptionGroup[BaseException], *, healthy: bool, refused: bool,
               name: str, log: logging.Logger, on_error: Callable[[str], None]) -> LinkError:
    """A session's TaskGroup failed with ``group``: the ``LinkError`` that ended the
    connection (its reason given to ``on_error``), to be raised (the back-off goes on).
    Raises ``Reconnect`` instead when the connection was ``healthy`` and not ``refused`` (the
    back-off starts over), and re-raises ``group`` when anything other than a ``LinkError`` is
    in it (a bug)."""
    ended, others = group.split(LinkError)
    if others is not None or ended is None:
        raise group
    error = ended.exceptions[0]
    assert isinstance(error, LinkError)
    on_error(error.reason)
    if healthy and not refused:
        log.warning("%s: %s; reconnecting", name, error.reason)
        raise Reconnect from None
    return error
