"""The message stream of the ingest benchmark (bench/bench_ingest.py): gateways with their own
certificates, their sealed batches, their births, and publishing them all to the broker.

Each gateway is a 50-point site like bench/bench_drain.py's (five meters: float32, DL/T 645
BCD and scaled-integer values, a reading a minute per point), sealed in batches of
:data:`PER_BATCH` readings (four poll cycles) with the gateway's own ECDSA P-256 key, hash
chained from seq 1 — what ``Outbox.seal_pending`` sends after an outage.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from bench.bench_drain import poll_cycles
from protocol import ZERO_HASH, Batch, Reading, batch_hash, seal, topic, unseal
from tests.brokers import Broker, ClientFiles, Pki, tls_context

UNIT = "91320100MA1ABCDE0C"
PER_BATCH = 200                 # readings a batch: Outbox's BATCH_SIZE
PUBLISH_WINDOW = 200            # QoS 1 messages in flight per publishing gateway
PUBLISH_TIMEOUT = 600.0


@dataclass
class GatewayStream:
    """One gateway: its identity and its sealed batches, seq 1 first."""

    gateway: str
    files: ClientFiles
    batches: list[bytes] = field(default_factory=list)

    @property
    def data_topic(self) -> str:
        return topic(UNIT, self.gateway, "up", "data")

    @property
    def status_topic(self) -> str:
        return topic(UNIT, self.gateway, "up", "status")

    def birth(self) -> bytes:
        return json.dumps({"status": "online", "unit": UNIT, "gateway": self.gateway,
                           "version": "bench",
                           "certificate": self.files.cert_path.read_text()}).encode()


def make_stream(pki: Pki, gateways: int, batches_each: int) -> list[GatewayStream]:
    """``gateways`` gateways, each with ``batches_each`` sealed batches of PER_BATCH readings."""
    end = int(time.time()) // 60 * 60_000
    streams: list[GatewayStream] = []
    for g in range(gateways):
        name = f"GW{g + 1:04d}"
        stream = GatewayStream(name, pki.gateway(UNIT, name))
        key = serialization.load_pem_private_key(stream.files.key_path.read_bytes(), None)
        readings = [r for cycle in poll_cycles(batches_each * PER_BATCH, end, seed=g)
                    for r in cycle]
        prev = ZERO_HASH
        for seq in range(1, batches_each + 1):
            chunk = tuple(readings[(seq - 1) * PER_BATCH:seq * PER_BATCH])
            sealed = seal(Batch(UNIT, name, seq, prev, "data", end + seq, chunk), key)
            stream.batches.append(sealed)
            prev = batch_hash(sealed)
        streams.append(stream)
    return streams


def interleaved(streams: Sequence[GatewayStream]) -> Iterator[tuple[GatewayStream, bytes]]:
    """The stream in publishing order: every gateway's batch 1, then every batch 2, …"""
    longest = max(len(s.batches) for s in streams)
    for i in range(longest):
        for s in streams:
            if i < len(s.batches):
                yield s, s.batches[i]


def decoded(streams: Sequence[GatewayStream]) -> list[tuple[str, tuple[Reading, ...]]]:
    """(gateway, readings) of every batch, in publishing order (for the storage ceiling)."""
    return [(s.gateway, unseal(payload, None).readings) for s, payload in interleaved(streams)]


CONNECT_ATTEMPTS = 3      # a connection now and then gets no CONNACK (seen once in ~300)


class _Publisher:
    """One gateway's paho connection (its own certificate: the ACL lets it write its topics)."""

    def __init__(self, broker: Broker, stream: GatewayStream, client_id: str) -> None:
        self.stream = stream
        self.sent = 0
        self.acked = 0
        self.refused: list[str] = []
        self.done = threading.Event()
        self._connected = threading.Event()
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            self.client = self._connect(broker, stream, client_id)
            if self._connected.wait(10):
                break
            self.close()
            print(f"  ({stream.gateway}: no CONNACK within 10 s, attempt {attempt} of "
                  f"{CONNECT_ATTEMPTS})", flush=True)
        else:
            raise RuntimeError(f"{stream.gateway}: no CONNACK in {CONNECT_ATTEMPTS} attempts")

    def _connect(self, broker: Broker, stream: GatewayStream, client_id: str) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        client.tls_set_context(tls_context(stream.files.ca_path, stream.files))
        client.max_inflight_messages_set(PUBLISH_WINDOW)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.connect(broker.host, broker.port, keepalive=60)
        client.loop_start()
        return client

    def _on_connect(self, _c: paho.Client, _u: Any, _f: paho.ConnectFlags, reason: ReasonCode,
                    _p: Any) -> None:
        if reason.is_failure:
            self.refused.append(f"CONNACK {reason}")
        self._connected.set()

    def _on_publish(self, _c: paho.Client, _u: Any, _mid: int, reason: ReasonCode,
                    _p: Any) -> None:
        if reason.is_failure:
            self.refused.append(f"PUBACK {reason}")
        self.acked += 1
        if self.acked == self.sent:
            self.done.set()

    def publish(self, topic_name: str, payload: bytes, *, retain: bool = False) -> None:
        self.done.clear()
        self.sent += 1
        info = self.client.publish(topic_name, payload, qos=1, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {paho.error_string(info.rc)}")

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < self.sent:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.stream.gateway}: {self.acked} PUBACKs of "
                                   f"{self.sent}")
            self.done.wait(0.01)
        if self.refused:
            raise RuntimeError(f"{self.stream.gateway}: the broker refused: {self.refused[0]}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # paho's client holds our bound methods, we hold it: a cycle only a full garbage
        # collection frees, and until then its socket and wake-up socket pair stay open. In
        # a long run the file descriptors pass 1,024, which paho's select() cannot watch:
        # its thread dies and the next CONNACK is never read. Break the cycle.
        self.client.on_connect = None
        self.client.on_publish = None


def publish_births(broker: Broker, streams: Sequence[GatewayStream]) -> None:
    """Each gateway's birth message (retained, as the gateway's uplink sends it)."""
    publishers = [_Publisher(broker, s, f"bench-birth-{s.gateway}") for s in streams]
    try:
        for p in publishers:
            p.publish(p.stream.status_topic, p.stream.birth(), retain=True)
        for p in publishers:
            p.wait(30)
    finally:
        for p in publishers:
            p.close()


def publish_stream(broker: Broker, streams: Sequence[GatewayStream], tag: str) -> float:
    """Publish every batch, interleaved across gateways, each gateway over its own connection;
    returns the seconds until the last PUBACK."""
    began = time.perf_counter()
    publishers = {s.gateway: _Publisher(broker, s, f"bench-pub-{tag}-{s.gateway}")
                  for s in streams}
    try:
        for stream, payload in interleaved(streams):
            publishers[stream.gateway].publish(stream.data_topic, payload)
        for p in publishers.values():
            p.wait(PUBLISH_TIMEOUT)
    finally:
        for p in publishers.values():
            p.close()
    return time.perf_counter() - began
