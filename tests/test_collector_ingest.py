"""The collector's ingest against a real Mosquitto (mutual TLS, the Kemon ACL) and real
databases (SQLite files, a private PostgreSQL): every reading stored exactly once, nothing
acknowledged before it is committed.

Traffic comes from a real gateway (``tests.test_delivery.Site``: Modbus simulator, store,
sealing, uplink) or from sealed batches published with a gateway's own identity
(:class:`Gateway` below), which lets a test drop, tamper with or forge batches. Collectors run
in this process (:class:`Ingest`, whose counters the tests read) or as separate processes
(``python -c`` calling ``run_collector``) that are killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from collector import Storage, VerifiedBatch, open_storage
from collector._ingest import Ingest, IngestOptions
from collector._ingest_state import ChainLookups, GapWatch, GroupLookups
from collector._model import BrokerConfig, CollectorConfig, CollectorSection
from protocol import ZERO_HASH, Batch, Period, Reading, batch_hash, seal, unseal

from .brokers import Broker, ClientFiles, MqttClient, Pki
from .conftest import ROOT, UNIT

GW1, GW2, GW3 = "GWI1", "GWI2", "GWI3"
PER_BATCH = 25
T0 = 1_795_000_000_000         # 2026-11-17, ms since the epoch
FAST = IngestOptions(linger=0.02, reconnect_wait=0.05, reconnect_max=0.5, storage_wait=0.05,
                     storage_max=0.3, gap_grace=0.3, report_interval=5.0)

Row = tuple[str, str, str, str, int, float, str]


# --- a gateway's identity publishing sealed batches ------------------------------------------

class Gateway:
    """A gateway's identity on the broker: publishes its birth and batches it seals itself."""

    def __init__(self, broker: Broker, pki: Pki, gateway: str, unit: str = UNIT) -> None:
        self.unit, self.gateway = unit, gateway
        self.files: ClientFiles = pki.gateway(unit, gateway)
        self.key: Any = load_pem_private_key(self.files.key_path.read_bytes(), None)
        self.client = MqttClient.connect(broker, self.files)
        self.sealed: dict[int, bytes] = {}

    @property
    def data_topic(self) -> str:
        return f"kemon/v1/{self.unit}/{self.gateway}/up/data"

    def birth(self) -> None:
        doc = {"status": "online", "unit": self.unit, "gateway": self.gateway,
               "version": "test", "certificate": self.files.cert_path.read_text()}
        self.client.publish(f"kemon/v1/{self.unit}/{self.gateway}/up/status",
                            json.dumps(doc), retain=True)

    def readings(self, seq: int) -> tuple[Reading, ...]:
        return tuple(Reading("0000000001000001", Period.INSTANT,
                             T0 + (seq * PER_BATCH + i) * 60_000, float(seq * 1000 + i))
                     for i in range(PER_BATCH))

    def seal_upto(self, last: int, key: Any = None) -> None:
        """Seal batches 1..last (the hash chain) without publishing them."""
        for seq in range(len(self.sealed) + 1, last + 1):
            prev = batch_hash(self.sealed[seq - 1]) if seq > 1 else ZERO_HASH
            self.sealed[seq] = seal(Batch(self.unit, self.gateway, seq, prev, "data",
                                          T0 + seq, self.readings(seq)), key or self.key)

    def publish(self, *seqs: int, qos: int = 1, pace: float = 0.0) -> None:
        """Publish the batches ``seqs`` (waiting for each PUBACK), ``pace`` seconds apart."""
        self.seal_upto(max(seqs))
        for seq in seqs:
            self.client.publish(self.data_topic, self.sealed[seq], qos=qos)
            if pace:
                time.sleep(pace)

    def expected(self, seqs: range | list[int]) -> set[Row]:
        return {(self.unit, self.gateway, r.point, str(r.period), r.ts, r.value, "good")
                for s in seqs for r in self.readings(s)}

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def gateways(broker: Broker, pki: Pki) -> Iterator[Callable[[str], Gateway]]:
    made: list[Gateway] = []

    def make(gateway: str) -> Gateway:
        made.append(Gateway(broker, pki, gateway))
        return made[-1]

    try:
        yield make
    finally:
        for g in made:
            g.close()


# --- collectors ---------------------------------------------------------------------------------

def config(tmp_path: Path, broker: Broker, pki: Pki, database: str, *,
           client_id: str = "kemon-test-collector", queue_size: int = 10_000,
           name: str = "test") -> CollectorConfig:
    ident = pki.collector(name)
    return CollectorConfig(
        source=tmp_path / "collector.toml",
        collector=CollectorSection(role="province", region="320000", database=database,
                                   queue=queue_size),
        broker=BrokerConfig(url=broker.url, ca_file=pki.ca_path, cert_file=ident.cert_path,
                            key_file=ident.key_path, client_id=client_id, keepalive=5))


@contextlib.asynccontextmanager
async def running(cfg: CollectorConfig, options: IngestOptions = FAST,
                  ) -> AsyncIterator[Ingest]:
    """An in-process ingest, connected; stopped (and awaited) on exit."""
    ingest = Ingest(cfg, options)
    stop = asyncio.Event()
    task = asyncio.create_task(ingest.run(stop))
    try:
        await until(lambda: ingest.counters.connections >= 1 or task.done(), 15, "connected")
        if task.done():
            task.result()
        yield ingest
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        await asyncio.sleep(0.02)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for: {what}"
        time.sleep(0.05)


CHILD = """
import asyncio, json, logging, signal, sys
from pathlib import Path
from collector._ingest import IngestOptions, run_collector
from collector._model import BrokerConfig, CollectorConfig, CollectorSection

a = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
cfg = CollectorConfig(
    source=Path(a["source"]),
    collector=CollectorSection(role="province", region="320000", database=a["database"]),
    broker=BrokerConfig(url=a["url"], ca_file=Path(a["ca"]), cert_file=Path(a["cert"]),
                        key_file=Path(a["key"]), client_id=a["client_id"], keepalive=5))

async def main():
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await run_collector(cfg, stop, options=IngestOptions(linger=0.02, reconnect_wait=0.05,
                                                         reconnect_max=0.5))

asyncio.run(main())
"""


class CollectorProcess:
    """A collector in its own process (``run_collector``), its log in ``log``."""

    def __init__(self, cfg: CollectorConfig, log: Path) -> None:
        args = {"source": str(cfg.source), "database": cfg.collector.database,
                "url": cfg.broker.url, "ca": str(cfg.broker.ca_file),
                "cert": str(cfg.broker.cert_file), "key": str(cfg.broker.key_file),
                "client_id": cfg.broker.client_id}
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(args)],
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_connected(self, times: int = 1, timeout: float = 15) -> None:
        wait_until(lambda: self.text().count(": connected to ") >= times
                   or self.proc.poll() is not None, timeout, "collector connected")
        assert self.proc.poll() is None, self.text()

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def processes() -> Iterator[list[CollectorProcess]]:
    started: list[CollectorProcess] = []
    try:
        yield started
    finally:
        for p in started:
            p.kill()


def stored(storage: Storage, gateway: str | None = None) -> list[Row]:
    return [(r.unit, r.gateway, r.point, str(r.period), r.ts, r.value, r.quality)
            for r in storage.readings(gateway=gateway)]


def batches_of(storage: Storage, gateway: str) -> int:
    return next((row.batches for row in storage.gateways() if row.gateway == gateway), 0)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collector.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


# --- the pure parts -----------------------------------------------------------------------------

def test_gap_watch_waits_out_the_grace_then_rate_limits_each_range() -> None:
    watch = GapWatch(grace=5, interval=60)
    g = (UNIT, GW1)
    watch.note(g, now=100)
    assert watch.due(104) == [] and watch.due(105) == [g]
    assert watch.plan(g, [(3, 4), (9, 9)], now=105) == [(3, 4), (9, 9)]
    watch.sent(g, (3, 4), 105)                     # (9, 9) could not be sent
    assert watch.due(164) == [] and watch.due(165) == [g]
    assert watch.plan(g, [(3, 4), (9, 9)], now=150) == [(9, 9)]   # (3, 4) asked < 60 s ago
    assert watch.plan(g, [(3, 4)], now=165) == [(3, 4)]           # a minute later: again
    assert watch.plan(g, [], now=170) == [] and len(watch) == 0   # filled: forgotten
    watch.note(g, now=200)
    watch.retry_later(g, now=201)
    assert watch.due(205) == [] and watch.due(206) == [g]


class _Stored:
    """Lookups over a dict, counting the questions asked."""

    def __init__(self, hashes: dict[int, bytes]) -> None:
        self.hashes = hashes
        self.asked = 0

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        return None

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        return max(self.hashes.items()) if self.hashes else None

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        self.asked += 1
        return self.hashes.get(seq)


def _vb(seq: int, digest: bytes) -> VerifiedBatch:
    batch = Batch(UNIT, GW1, seq, ZERO_HASH, "data", T0, ())
    return VerifiedBatch(batch=batch, payload=b"", hash=digest, received=T0)


def test_group_lookups_count_groups_in_hand_as_stored_until_discarded() -> None:
    storage = _Stored({1: b"h1"})
    lookups = GroupLookups(storage, cache_size=2)
    assert lookups.batch_hash(UNIT, GW1, 1) == b"h1"
    assert lookups.batch_hash(UNIT, GW1, 1) == b"h1" and storage.asked == 1   # cached
    lookups.add(1, _vb(2, b"h2"))                       # group 1 being stored
    lookups.add(2, _vb(3, b"h3"))                       # group 2 being verified
    assert lookups.batch_hash(UNIT, GW1, 2) == b"h2"
    assert lookups.last_batch(UNIT, GW1) == (3, b"h3")
    lookups.discard(2)
    assert lookups.batch_hash(UNIT, GW1, 3) is None
    assert lookups.last_batch(UNIT, GW1) == (2, b"h2")
    lookups.discard(1)                                  # the store failed
    assert lookups.batch_hash(UNIT, GW1, 2) is None
    assert lookups.last_batch(UNIT, GW1) == (1, b"h1")
    lookups.add(3, _vb(2, b"h2"))
    lookups.add(3, _vb(3, b"h3"))
    lookups.commit(3)                                   # stored: remembered, cache bounded
    asked = storage.asked
    assert lookups.batch_hash(UNIT, GW1, 3) == b"h3" and storage.asked == asked
    assert lookups.batch_hash(UNIT, GW1, 1) == b"h1" and storage.asked == asked + 1


class _Bulk(_Stored):
    """_Stored that also answers a group's questions in one go (ChainLookups)."""

    def __init__(self, hashes: dict[int, bytes]) -> None:
        super().__init__(hashes)
        self.bulk: list[tuple[list[tuple[str, str, int]], list[tuple[str, str]]]] = []

    def stored_chain(self, keys: Sequence[tuple[str, str, int]],
                     gateways: Sequence[tuple[str, str]],
                     ) -> tuple[dict[tuple[str, str, int], bytes],
                                dict[tuple[str, str], tuple[int, bytes]]]:
        self.bulk.append((list(keys), list(gateways)))
        last = self.last_batch(UNIT, GW1)
        return ({k: self.hashes[k[2]] for k in keys if k[2] in self.hashes},
                {gw: last for gw in gateways if last is not None})


def test_group_lookups_prefetch_a_group_s_questions_in_one_query() -> None:
    storage = _Bulk({1: b"h1", 2: b"h2"})
    lookups = GroupLookups(storage)
    assert isinstance(storage, ChainLookups) and not isinstance(_Stored({}), ChainLookups)
    lookups.add(1, _vb(3, b"h3"))                          # a group in hand
    with lookups.prefetched([(UNIT, GW1, 4), (UNIT, GW1, 6)]):
        # seq 3 is in hand: not asked; 4, 5 and 6 are, with the gateway's last batch
        assert storage.bulk == [([(UNIT, GW1, 4), (UNIT, GW1, 5), (UNIT, GW1, 6)],
                                 [(UNIT, GW1)])]
        storage.hashes[5] = b"h5"                          # stored meanwhile by another
        assert lookups.batch_hash(UNIT, GW1, 4) is None
        assert lookups.batch_hash(UNIT, GW1, 5) is None    # this group's answer stands
        assert lookups.batch_hash(UNIT, GW1, 3) == b"h3"
        assert lookups.last_batch(UNIT, GW1) == (3, b"h3")
        lookups.commit(1)                                  # group 1 stored meanwhile
        assert lookups.last_batch(UNIT, GW1) == (3, b"h3")
        assert storage.asked == 0
    assert lookups.batch_hash(UNIT, GW1, 5) == b"h5" and storage.asked == 1   # asked again
    assert lookups.last_batch(UNIT, GW1) == (5, b"h5")


# --- with a broker ----------------------------------------------------------------------------

def test_a_real_gateway_s_readings_are_stored_once_each(tmp_path: Path, pki: Pki,
                                                          broker: Broker) -> None:
    from .test_delivery import GW, Site

    cfg = config(tmp_path, broker, pki, f"sqlite:///{tmp_path / 'collector.db'}")
    site = Site(tmp_path, pki, {"province": broker})
    storage = open_storage(cfg.collector.database)

    def offline_and_complete(last: int) -> bool:
        rows = storage.gateways()
        return bool(rows) and rows[0].status == "offline" and rows[0].batches == last

    async def scenario() -> Ingest:
        async with running(cfg) as ingest:
            await site.run(3.0, delivered=("province",))
            delivered = site.state("cursor.province")
            assert isinstance(delivered, int) and delivered > 3
            await until(lambda: offline_and_complete(delivered), 20, "every batch stored")
        return ingest

    try:
        ingest = asyncio.run(scenario())
        delivered = site.state("cursor.province")
        assert isinstance(delivered, int)
        # what the gateway sent: its own batches up to its cursor, read from its store
        store = tmp_path / "data" / "store.db"
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
            sent = [unseal(bytes(p), site.public_key) for (p,) in db.execute(
                "SELECT payload FROM batch WHERE seq <= ? ORDER BY seq", (delivered,))]
        assert [b.seq for b in sent] == list(range(1, delivered + 1))
        expected = {(UNIT, GW, r.point, str(r.period), r.ts, r.value, str(r.quality))
                    for b in sent for r in b.readings}
        rows = stored(storage, GW)
        assert len(rows) == len(set(rows)) == len(expected)
        assert set(rows) == expected
        assert expected <= {(UNIT, GW, *r) for r in site.stored()}
        [row] = storage.gateways()
        assert (row.gaps, row.last_seq, row.readings) == (0, delivered, len(rows))
        assert storage.quarantine_counts() == {}
    finally:
        storage.close()
    c = ingest.counters
    assert c.acked == c.messages and c.quarantined == {} and c.batches_stored == delivered


def test_kill_9_mid_stream_then_restart_loses_nothing_and_stores_nothing_twice(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway],
        processes: list[CollectorProcess], database: str) -> None:
    n = 300
    cfg = config(tmp_path, broker, pki, database, client_id="kemon-kill-test")
    storage = open_storage(database)
    try:
        first = CollectorProcess(cfg, tmp_path / "first.log")
        processes.append(first)
        first.wait_connected()
        gw = gateways(GW1)
        gw.birth()
        gw.seal_upto(n)
        publisher = threading.Thread(target=gw.publish, args=tuple(range(1, n + 1)),
                                     kwargs={"pace": 0.003})       # about a second long
        publisher.start()
        try:
            wait_until(lambda: batches_of(storage, GW1) >= n // 10, 20, "storing under way")
            first.kill()                                  # SIGKILL mid-stream
            at_kill = batches_of(storage, GW1)
        finally:
            publisher.join(30)
        assert at_kill < n, "the kill came too late to prove anything"
        second = CollectorProcess(cfg, tmp_path / "second.log")
        processes.append(second)
        wait_until(lambda: batches_of(storage, GW1) == n, 30,
                   f"all {n} batches stored after the restart")
        assert second.terminate() == 0, second.text()
        assert "(resumed session)" in second.text()
        rows = stored(storage, GW1)
        assert len(rows) == n * PER_BATCH and set(rows) == gw.expected(range(1, n + 1))
        [row] = storage.gateways()
        assert (row.batches, row.readings, row.gaps, row.last_seq) == (n, n * PER_BATCH, 0, n)
        assert storage.quarantine_counts() == {}
    finally:
        storage.close()


def test_two_collector_processes_share_the_load_and_store_each_reading_once(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway],
        processes: list[CollectorProcess], pg_url: str) -> None:
    n = 200
    storage = open_storage(pg_url)
    try:
        for name in ("a", "b"):
            cfg = config(tmp_path, broker, pki, pg_url, client_id=f"kemon-share-{name}")
            processes.append(CollectorProcess(cfg, tmp_path / f"{name}.log"))
        for p in processes:
            p.wait_connected()
        g1, g2 = gateways(GW1), gateways(GW2)
        g1.birth()
        g2.birth()
        both = [threading.Thread(target=g.publish, args=tuple(range(1, n + 1)))
                for g in (g1, g2)]
        for t in both:
            t.start()
        for t in both:
            t.join(60)
        wait_until(lambda: batches_of(storage, GW1) == batches_of(storage, GW2) == n, 30,
                   "every batch stored")
        for p in processes:
            assert p.terminate() == 0, p.text()
        rows = stored(storage)
        assert len(rows) == 2 * n * PER_BATCH
        assert set(rows) == g1.expected(range(1, n + 1)) | g2.expected(range(1, n + 1))
        assert storage.quarantine_counts() == {}
        shares = [int(re.findall(r"stopped: .* batches=(\d+)", p.text())[-1]) for p in processes]
        assert all(s > 0 for s in shares) and sum(shares) >= 2 * n, shares
    finally:
        storage.close()


def test_a_gap_makes_the_collector_ask_the_gateway_to_resend(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway]) -> None:
    cfg = config(tmp_path, broker, pki, f"sqlite:///{tmp_path / 'collector.db'}")
    gw = gateways(GW1)
    gw.client.subscribe(f"kemon/v1/{UNIT}/{GW1}/down/resend")   # its own down/#: allowed

    def requests() -> list[dict[str, int]]:
        out = []
        while True:
            try:
                out.append(json.loads(gw.client.messages.get_nowait().payload))
            except queue.Empty:
                return out

    async def scenario() -> Ingest:
        async with running(cfg) as ingest:
            gw.birth()
            gw.publish(1, 2, 5, 6)                     # 3 and 4 lost on the way
            await until(lambda: ingest.counters.resend_requests >= 1, 10, "a resend request")
            await asyncio.sleep(0.8)                   # more looks: rate-limited, no repeat
            assert requests() == [{"from_seq": 3, "to_seq": 4}]
            gw.publish(3, 4)                           # the gateway resends them
            await until(lambda: ingest.counters.batches_stored == 6, 10, "the gap filled")
            await asyncio.sleep(0.8)
            assert requests() == []
        return ingest

    ingest = asyncio.run(scenario())
    assert ingest.counters.resend_requests == 1
    storage = open_storage(cfg.collector.database)
    try:
        assert set(stored(storage)) == gw.expected(range(1, 7))
        assert storage.missing_seqs(UNIT, GW1) == []
    finally:
        storage.close()


def test_bad_batches_are_quarantined_and_ingest_goes_on(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway]) -> None:
    cfg = config(tmp_path, broker, pki, f"sqlite:///{tmp_path / 'collector.db'}")
    g1, g2, g3 = gateways(GW1), gateways(GW2), gateways(GW3)

    async def scenario() -> Ingest:
        async with running(cfg) as ingest:
            g1.birth()
            g2.birth()                                 # g3 never presents its certificate
            g1.publish(1)
            g1.seal_upto(2)
            good = g1.sealed[2]
            tampered = bytearray(good)
            tampered[-80] ^= 0x01                      # one bit of the body (or signature)
            forged = seal(Batch(UNIT, GW1, 2, batch_hash(g1.sealed[1]), "data", T0 + 2,
                                g1.readings(2)), g2.key)   # another gateway's key
            for payload in (bytes(tampered), forged, b"", os.urandom(300)):
                g1.client.publish(g1.data_topic, payload)
            g3.publish(1)
            g1.client.publish(g1.data_topic, good)     # the real one still gets in
            g1.client.publish(g1.data_topic, good)     # and again: a duplicate
            await until(lambda: ingest.counters.acked == ingest.counters.messages == 10, 10,
                        "everything acknowledged")
        return ingest

    ingest = asyncio.run(scenario())
    c = ingest.counters
    assert c.quarantined == {"signature": 2, "format": 2, "certificate": 1}
    assert (c.batches_stored, c.duplicates, c.statuses) == (2, 1, 2)
    storage = open_storage(cfg.collector.database)
    try:
        assert storage.quarantine_counts() == c.quarantined
        assert set(stored(storage)) == g1.expected([1, 2])
    finally:
        storage.close()


def _database_down(pg_url: str, down: bool) -> None:
    """Refuse (or allow again) connections to ``pg_url``'s database, dropping current ones."""
    name = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"false" if down else "true"}')
        if down:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))


def test_a_database_outage_holds_acks_and_backpressure_reaches_the_broker(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway],
        pg_url: str) -> None:
    bound, group = 8, 4
    cfg = config(tmp_path, broker, pki, pg_url, queue_size=bound, client_id="kemon-outage")
    gw = gateways(GW1)
    options = dataclasses.replace(FAST, group_size=group)

    async def outages() -> Ingest:
        async with running(cfg, options) as ingest:
            c = ingest.counters
            gw.birth()
            gw.publish(1, 2, 3)
            await until(lambda: c.batches_stored == 3, 10, "stored before the outage")

            # QoS 1: Receive Maximum (= the queue) keeps the rest at the broker
            _database_down(pg_url, True)
            try:
                acked, received = c.acked, c.messages
                await asyncio.to_thread(gw.publish, *range(4, 41))  # the broker takes them all
                await until(lambda: c.storage_failures >= 3, 10, "failed attempts")
                await asyncio.sleep(0.3)
                assert c.acked == acked                      # nothing acknowledged
                assert 0 < c.messages - received <= bound
            finally:
                _database_down(pg_url, False)
            await until(lambda: c.batches_stored == 40, 20, "stored after the outage")

            # QoS 0 (no Receive Maximum for those): the queue fills, reading stops
            _database_down(pg_url, True)
            try:
                received, failures = c.messages, c.storage_failures
                await asyncio.to_thread(gw.publish, *range(41, 71), qos=0)
                await until(lambda: c.pauses >= 1, 10, "reading paused")
                await until(lambda: c.storage_failures >= failures + 3, 10, "failed attempts")
                assert c.messages - received <= bound + group
            finally:
                _database_down(pg_url, False)
            await until(lambda: c.batches_stored == 70, 20, "stored after the second outage")

            # down again, and the collector is stopped meanwhile
            _database_down(pg_url, True)
            await asyncio.to_thread(gw.publish, *range(71, 76))
            failures = c.storage_failures
            await until(lambda: c.storage_failures >= failures + 3, 10, "failed attempts")
            held = c.acked
        assert c.acked == held                         # stopped without acknowledging them
        _database_down(pg_url, False)
        return ingest

    first = asyncio.run(outages())
    assert first.counters.batches_stored == 70

    async def restart() -> Ingest:
        async with running(cfg) as ingest:             # the same session: they come again
            await until(lambda: ingest.counters.batches_stored == 5, 20, "redelivered")
        return ingest

    asyncio.run(restart())
    storage = open_storage(pg_url)
    try:
        rows = stored(storage)
        assert len(rows) == 75 * PER_BATCH and set(rows) == gw.expected(range(1, 76))
    finally:
        storage.close()


def test_the_collector_reconnects_after_a_broker_restart(
        tmp_path: Path, pki: Pki, broker: Broker, gateways: Callable[[str], Gateway]) -> None:
    cfg = config(tmp_path, broker, pki, f"sqlite:///{tmp_path / 'collector.db'}")
    gw = gateways(GW1)

    async def scenario() -> Ingest:
        async with running(cfg) as ingest:
            c = ingest.counters
            gw.birth()
            gw.publish(*range(1, 21))
            await until(lambda: c.batches_stored == 20, 10, "stored before the restart")
            gw.client.close()
            await asyncio.to_thread(broker.restart)
            await until(lambda: c.connections == 2, 15, "reconnected")
            gw.client = MqttClient.connect(broker, gw.files)
            gw.publish(*range(21, 41))
            await until(lambda: c.batches_stored == 40, 10, "stored after the restart")
        return ingest

    ingest = asyncio.run(scenario())
    assert ingest.counters.acked == ingest.counters.messages
    storage = open_storage(cfg.collector.database)
    try:
        assert set(stored(storage)) == gw.expected(range(1, 41))
    finally:
        storage.close()
