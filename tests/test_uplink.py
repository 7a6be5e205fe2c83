"""The uplink against a real Mosquitto (TLS, client certificates, Kemon's ACL).

Batches are fake payloads ``batch-<seq>`` in an in-memory outbox; a collector-identity paho
client subscribes and records what arrives. A small TCP proxy stands between the uplink and the
broker where the network has to fail (``tests/netproxy.py``: silent partition, abrupt cut).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import datetime as dt
import json
import logging
import queue
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gateway._model import DestinationConfig
from gateway._uplink import Uplink
from protocol._publish_flow import AckWindow, TokenBucket
from tests.brokers import Broker, ClientFiles, Message, MqttClient, Pki, make_pki
from tests.conftest import UNIT
from tests.netproxy import TcpProxy

GW = "GW0001"
DATA = f"kemon/v1/{UNIT}/{GW}/up/data"
STATUS = f"kemon/v1/{UNIT}/{GW}/up/status"
DOWN = f"kemon/v1/{UNIT}/{GW}/down"


# --- pure parts -------------------------------------------------------------------------------

def test_window_moves_only_over_the_acknowledged_prefix() -> None:
    window = AckWindow(10)
    for seq in (11, 12, 14, 15):           # seqs need not be consecutive
        window.sent(seq)
    assert not window.acknowledged(12)     # 11 still out
    assert window.acked == 10
    assert window.acknowledged(11)
    assert window.acked == 12
    assert not window.acknowledged(15)
    assert not window.acknowledged(99)     # unknown: ignored
    assert window.acknowledged(14)
    assert (window.acked, len(window)) == (15, 0)
    window.sent(16)
    window.restart()                       # connection lost: 16 goes again
    assert (window.acked, window.sent_upto, len(window)) == (15, 15, 0)
    with pytest.raises(ValueError, match="seq order"):
        window.sent(15)


def test_token_bucket_paces_after_its_burst() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    times: list[float] = []
    now = 0.0
    while len(times) < 12:
        pause = bucket.delay(now)
        if pause:
            now += pause
            continue
        bucket.take(now)
        times.append(now)
    assert times[:2] == [0.0, 0.0]                  # the burst
    assert times[-1] == pytest.approx(1.0)          # then 10 per second
    assert TokenBucket.burst_for(50) == 5 and TokenBucket.burst_for(2) == 1


# --- fixtures ---------------------------------------------------------------------------------

class MemoryOutbox:
    """An in-memory ``OutboxLike``: batches ``batch-<seq>``, acknowledgements recorded."""

    def __init__(self, count: int = 0, size: int = 0) -> None:
        self.batches: list[tuple[int, bytes]] = []
        self.acks: list[tuple[str, int]] = []
        self.size = size               # payloads padded with "." to this length
        self.add(count)

    def add(self, count: int) -> None:
        start = len(self.batches) + 1
        self.batches += [(s, (b"batch-%d" % s).ljust(self.size, b"."))
                         for s in range(start, start + count)]

    def acked_seq(self, destination: str) -> int:
        return max((s for d, s in self.acks if d == destination), default=0)

    def batches_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        start = bisect.bisect_right(self.batches, seq, key=lambda b: b[0])
        return self.batches[start:start + limit]

    def last_seq(self) -> int:
        return len(self.batches)

    def ack(self, destination: str, seq: int) -> None:
        assert seq > self.acked_seq(destination), "acknowledgements must grow"
        self.acks.append((destination, seq))


def seq_of(message: Message) -> int:
    match = re.fullmatch(rb"batch-(\d+)\.*", message.payload)
    assert match, message.payload
    return int(match.group(1))


def drain(client: MqttClient, topic: str | None = None, timeout: float = 0.5) -> list[Message]:
    """Everything the client has received, waiting ``timeout`` for stragglers."""
    got: list[Message] = []
    while True:
        try:
            message = client.messages.get(timeout=timeout)
        except queue.Empty:
            return got
        if topic is None or message.topic == topic:
            got.append(message)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def gw_files(pki: Pki) -> ClientFiles:
    return pki.gateway(UNIT, GW)


@pytest.fixture
def broker(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    b = Broker(pki, tmp_path / "broker")
    try:
        b.start()
        yield b
    finally:
        b.stop()


@pytest.fixture
def collector(broker: Broker, pki: Pki) -> Iterator[MqttClient]:
    """Subscribed to the gateway's up/# with a persistent session (a new client id each time:
    Mosquitto 2.0.11 does not persist a session that began with clean start)."""
    client = MqttClient.connect(broker, pki.collector(), f"collector-{time.monotonic_ns()}",
                                clean_start=False, session_expiry=3600)
    client.subscribe(f"kemon/v1/{UNIT}/{GW}/up/#")
    try:
        yield client
    finally:
        client.close()


def destination(url: str, files: ClientFiles, **kw: object) -> DestinationConfig:
    params: dict[str, object] = {"rate_limit": 100_000.0, "max_inflight": 64, "keepalive": 30}
    params.update(kw)
    return DestinationConfig(name="province", url=url, ca_file=files.ca_path,
                             cert_file=files.cert_path, key_file=files.key_path,
                             **params)  # type: ignore[arg-type]


def make_uplink(dest: DestinationConfig, outbox: MemoryOutbox, **kw: object) -> Uplink:
    params: dict[str, object] = {"retry_wait": 0.2, "retry_max": 1.0, "connect_timeout": 3.0}
    params.update(kw)
    return Uplink(dest, unit=UNIT, gateway=GW, outbox=outbox,
                  birth={"version": "0.1.0", "certificate": "PEM"},
                  **params)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(uplink.run(), name="test-uplink")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait for ``predicate``; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- delivery ---------------------------------------------------------------------------------

def test_every_batch_arrives_in_order_and_the_cursor_ends_at_the_last(
        broker: Broker, gw_files: ClientFiles, collector: MqttClient) -> None:
    # 1,000,000 readings at 200 a batch: 5,000 batches of about 2 kB, over TLS.
    count = 5000
    outbox = MemoryOutbox(count, size=2000)
    uplink = make_uplink(destination(broker.url, gw_files), outbox)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.connected, 5, "connected")
            await until(lambda: uplink.acked_seq == count, 60, "all acknowledged")
            assert uplink.last_connected is not None
            outbox.add(50)                     # sealed later: notify() sends them at once
            uplink.notify()
            took = await until(lambda: uplink.acked_seq == count + 50, 5, "the new batches")
            assert took < 0.9                  # not the one-second idle poll
        assert outbox.acked_seq("province") == count + 50   # stored on stop
        assert len(outbox.acks) < count / 10                # grouped, not one per batch

    asyncio.run(scenario())     # (speed is bench/bench_drain.py's business, not a test's)
    data = [seq_of(m) for m in drain(collector, DATA)]
    assert data == list(range(1, count + 51))


def test_broker_restart_mid_stream_loses_nothing(
        broker: Broker, pki: Pki, gw_files: ClientFiles, collector: MqttClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    outbox = MemoryOutbox(3000)
    uplink = make_uplink(destination(broker.url, gw_files, rate_limit=1000.0), outbox)
    seen: list[Message] = []

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.acked_seq >= 500, 10, "some delivered")
            await asyncio.to_thread(broker.stop)            # mid-stream
            seen.extend(drain(collector, timeout=0.1))
            collector.close()
            acked = uplink.acked_seq
            assert acked < 3000
            await until(lambda: not uplink.connected, 5, "the loss noticed")
            await asyncio.sleep(1.0)
            assert uplink.acked_seq == acked                 # nothing counted while down
            await asyncio.to_thread(broker.start)
            again = MqttClient.connect(broker, pki.collector(), collector.client_id,
                                       clean_start=False, session_expiry=3600)
            try:
                assert again.session_present
                await until(lambda: uplink.acked_seq == 3000, 20, "all acknowledged")
                seen.extend(drain(again, timeout=0.5))
            finally:
                again.close()

    asyncio.run(scenario())
    data = [seq_of(m) for m in seen if m.topic == DATA]
    assert set(data) == set(range(1, 3001))                  # at least once each
    assert outbox.acked_seq("province") == 3000
    assert lines(caplog, "province: connection lost")        # one clear line


def test_clean_stop_publishes_offline_and_a_new_subscriber_sees_the_birth(
        broker: Broker, pki: Pki, gw_files: ClientFiles) -> None:
    uplink = make_uplink(destination(broker.url, gw_files), MemoryOutbox(3))
    statuses: list[dict[str, object]] = []

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.acked_seq == 3, 5, "delivered")
            with MqttClient.connect(broker, pki.collector()) as late:
                late.subscribe(STATUS)
                birth = late.expect(3)
            assert birth.retain
            statuses.append(json.loads(birth.payload))
        with MqttClient.connect(broker, pki.collector()) as after:
            after.subscribe(STATUS)
            statuses.append(json.loads(after.expect(3).payload))

    asyncio.run(scenario())
    online, offline = statuses
    assert online["status"] == "online" and online["version"] == "0.1.0"
    assert online["certificate"] == "PEM" and isinstance(online["ts"], int)
    assert offline["status"] == "offline" and offline["reason"] == "stopped"


def test_rate_limit_is_respected(broker: Broker, gw_files: ClientFiles,
                                 collector: MqttClient) -> None:
    rate, count = 20.0, 40
    outbox = MemoryOutbox(count)
    uplink = make_uplink(destination(broker.url, gw_files, rate_limit=rate), outbox)

    async def scenario() -> float:
        async with running(uplink):
            await until(lambda: uplink.connected, 5, "connected")
            return await until(lambda: uplink.acked_seq == count, 10, "all delivered")

    took = asyncio.run(scenario())
    burst = TokenBucket.burst_for(rate)
    assert took >= (count - burst) / rate - 0.1          # 1.9 s at least
    assert took < (count / rate) * 1.5                    # and not much slower
    assert [seq_of(m) for m in drain(collector, DATA)] == list(range(1, count + 1))


# --- network failures -------------------------------------------------------------------------

@pytest.fixture
def proxy(broker: Broker) -> Iterator[TcpProxy]:
    with TcpProxy(broker.port, broker.host) as p:
        yield p


def test_silent_partition_is_detected_within_one_and_a_half_keepalives(
        broker: Broker, gw_files: ClientFiles, collector: MqttClient, proxy: TcpProxy,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    keepalive = 3        # paho alone notices after about 2 x keepalive: 6 s here
    outbox = MemoryOutbox(200)
    dest = destination(f"mqtts://localhost:{proxy.port}", gw_files, keepalive=keepalive,
                       rate_limit=100.0)
    uplink = make_uplink(dest, outbox)

    async def scenario() -> float:
        async with running(uplink):
            await until(lambda: uplink.acked_seq >= 50, 10, "some delivered")
            proxy.blackhole()                 # TCP stays open, nothing passes either way
            silenced = time.monotonic()
            await until(lambda: not uplink.connected, 3 * keepalive, "the partition noticed")
            noticed = time.monotonic() - silenced
            proxy.resume()
            await until(lambda: uplink.acked_seq == 200, 20, "all delivered after")
            return noticed

    noticed = asyncio.run(scenario())
    assert noticed <= 1.5 * keepalive + 0.4
    assert lines(caplog, "province: nothing received from the broker for")
    data = {seq_of(m) for m in drain(collector, DATA)}
    assert data == set(range(1, 201))


def test_abrupt_cut_publishes_the_will_and_the_uplink_comes_back(
        broker: Broker, pki: Pki, gw_files: ClientFiles, proxy: TcpProxy) -> None:
    outbox = MemoryOutbox(5)
    uplink = make_uplink(destination(f"mqtts://localhost:{proxy.port}", gw_files), outbox)
    watcher = MqttClient.connect(broker, pki.collector())
    watcher.subscribe(STATUS)
    states: list[str] = []

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.acked_seq == 5, 5, "delivered")
            states.append(json.loads(watcher.expect(3).payload)["status"])
            connected_at = uplink.last_connected
            proxy.drop_all()                              # both sockets closed, no DISCONNECT
            will = watcher.expect(5)
            states.append(json.loads(will.payload)["status"])
            with MqttClient.connect(broker, pki.collector()) as late:
                late.subscribe(STATUS)
                retained = late.expect(3)
            assert retained.retain
            states.append(json.loads(retained.payload)["status"])
            await until(lambda: uplink.last_connected != connected_at, 10, "reconnected")
            states.append(json.loads(watcher.expect(5).payload)["status"])

    try:
        asyncio.run(scenario())
    finally:
        watcher.close()
    assert states[:4] == ["online", "offline", "offline", "online"]


@pytest.mark.parametrize("fault", ["wrong CA", "expired certificate", "wrong host name"])
def test_tls_failures_are_refused_with_one_clear_line_and_retried(
        fault: str, pki: Pki, gw_files: ClientFiles, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    server_pki, files, host = pki, gw_files, "127.0.0.1"
    if fault == "wrong CA":
        other = make_pki(tmp_path / "other", ca_name="Another CA")
        files = ClientFiles(gw_files.common_name, gw_files.cert_path, gw_files.key_path,
                            other.ca_path, gw_files.serial)
        expected = "certificate verify failed: self-signed certificate in certificate chain"
    elif fault == "expired certificate":
        past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
        files = pki.client(gw_files.common_name, not_before=past - dt.timedelta(days=10),
                           not_after=past)
        expected = "the broker refused our certificate (sslv3 alert certificate expired)"
    else:   # the broker's certificate names 127.0.0.1 only; we reach it as localhost
        server_pki = make_pki(tmp_path / "ip-only", hosts=("127.0.0.1",))
        files = server_pki.gateway(UNIT, GW)
        host = "localhost"
        expected = ("certificate verify failed: Hostname mismatch, certificate is not valid "
                    "for 'localhost';")
    outbox = MemoryOutbox(10)
    caplog.set_level(logging.WARNING)

    async def scenario(broker: Broker) -> None:
        uplink = make_uplink(destination(f"mqtts://{host}:{broker.port}", files), outbox)
        async with running(uplink):
            await until(lambda: len(lines(caplog, "province: TLS handshake failed")) >= 2, 10,
                        "two attempts")
            assert not uplink.connected
            assert uplink.last_error is not None
            assert uplink.last_error.startswith("TLS handshake failed")
        # Fixed configuration: everything goes, from the untouched cursor.
        fixed = make_uplink(destination(broker.url, server_pki.gateway(UNIT, GW)), outbox)
        async with running(fixed):
            await until(lambda: fixed.acked_seq == 10, 10, "delivery once fixed")

    with Broker(server_pki, tmp_path / "broker") as broker:
        with MqttClient.connect(broker, server_pki.collector()) as collector:
            collector.subscribe(DATA)
            asyncio.run(scenario(broker))
            data = [seq_of(m) for m in drain(collector, DATA)]
    failures = lines(caplog, "province: TLS handshake failed")
    assert expected in failures[0], failures[0]
    assert "retrying in" in failures[0]
    assert len(failures[0].splitlines()) == 1
    assert outbox.acks[0] == ("province", outbox.acks[0][1])    # only the fixed uplink acked
    assert data == list(range(1, 11))                             # none before the fix


# --- refusals, downlink, resends --------------------------------------------------------------

def test_a_refused_puback_is_not_a_delivery(broker: Broker, pki: Pki, collector: MqttClient,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    impostor = pki.gateway(UNIT, "GW0002")     # the ACL lets it write only under GW0002
    outbox = MemoryOutbox(20)
    uplink = make_uplink(destination(broker.url, impostor), outbox)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: len(lines(caplog, "Not authorized (0x87)")) >= 2, 10,
                        "two refused attempts")
            assert uplink.acked_seq == 0

    asyncio.run(scenario())
    refused = lines(caplog, "Not authorized (0x87)")
    assert refused[0].startswith("province: the broker refused ")
    assert "not delivered; retrying in" in refused[0]
    assert outbox.acks == []
    assert drain(collector, DATA, timeout=0.2) == []


def test_downlink_reaches_the_handler_and_its_crash_breaks_nothing(
        broker: Broker, pki: Pki, gw_files: ClientFiles, collector: MqttClient,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    received: list[tuple[str, bytes]] = []

    async def on_downlink(kind: str, payload: bytes) -> None:
        received.append((kind, payload))
        if kind == "notice":
            raise RuntimeError("handler bug")

    outbox = MemoryOutbox(3)
    dest = destination(broker.url, gw_files)
    platform = MqttClient.connect(broker, pki.collector())

    async def scenario() -> None:
        uplink = make_uplink(dest, outbox, on_downlink=on_downlink)
        async with running(uplink):
            await until(lambda: uplink.acked_seq == 3, 5, "connected and delivered")
            for topic, payload in [(f"{DOWN}/notice", b"hello"), (f"{DOWN}/a/b", b"bad"),
                                   (f"{DOWN}/resend", b"1-2")]:
                await asyncio.to_thread(platform.publish, topic, payload)
            await until(lambda: len(received) == 2, 5, "two downlink messages")
            outbox.add(2)                          # the uplink still works
            uplink.notify()
            await until(lambda: uplink.acked_seq == 5, 5, "later batches")
        # Offline: the persistent session keeps what the platform sends meanwhile.
        await asyncio.to_thread(platform.publish, f"{DOWN}/timesync", b"t")
        again = make_uplink(dest, outbox, on_downlink=on_downlink)
        async with running(again):
            await until(lambda: len(received) == 3, 5, "the message sent while offline")

    try:
        asyncio.run(scenario())
    finally:
        platform.close()
    assert received == [("notice", b"hello"), ("resend", b"1-2"), ("timesync", b"t")]
    assert lines(caplog, "province: downlink handler failed on notice")
    assert lines(caplog, "province: ignored a downlink message")
    assert [seq_of(m) for m in drain(collector, DATA)] == [1, 2, 3, 4, 5]


def test_republish_sends_copies_without_moving_the_cursor(
        broker: Broker, gw_files: ClientFiles, collector: MqttClient) -> None:
    outbox = MemoryOutbox(5)
    uplink = make_uplink(destination(broker.url, gw_files), outbox)

    async def scenario() -> None:
        async with running(uplink):
            await until(lambda: uplink.acked_seq == 5, 5, "delivered")
            await uplink.republish([(2, b"batch-2"), (3, b"batch-3")])
            await until(lambda: collector.messages.qsize() >= 5 + 2 + 1, 5, "the copies")
        assert outbox.acked_seq("province") == 5

    asyncio.run(scenario())
    assert [seq_of(m) for m in drain(collector, DATA)] == [1, 2, 3, 4, 5, 2, 3]
