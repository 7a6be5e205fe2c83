"""Province → national relay (数据对接) over two real Mosquitto brokers, each with its own CA and
mutual TLS: gateways report to the province; the province collector stores and relays the
batches unchanged; the national collector verifies the same gateway signatures and stores them
once — also when a gateway reports to both. The national side goes away for a while, refuses,
or has nobody subscribed: nothing is lost, and a restart resends only what was not acknowledged.

Both collectors run in this process (:class:`collector._ingest.Ingest`); the province on
SQLite, the national on PostgreSQL (one test the other way round), so both back ends relay and
receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import subprocess
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import Storage, open_storage
from collector._ingest import Ingest, IngestOptions
from collector._model import BrokerConfig, CollectorConfig, CollectorSection, UpstreamConfig

from .brokers import Broker, MqttClient, Pki, make_pki
from .conftest import ROOT, UNIT, kemon_cmd
from .test_collector_ingest import Gateway, stored, until

GW1, GW2 = "GWR1", "GWR2"
FAST = IngestOptions(linger=0.02, reconnect_wait=0.05, reconnect_max=0.5, storage_wait=0.05,
                     storage_max=0.3, gap_grace=0.3, report_interval=5.0)


@dataclasses.dataclass
class Levels:
    """Two platforms: the province (its CA issued the gateways) and the national one."""

    tmp: Path
    prov_pki: Pki
    nat_pki: Pki
    prov: Broker
    nat: Broker
    prov_db: str
    nat_db: str

    def province(self, *, client_id: str = "kemon-prov", share_group: str = "collectors",
                 rate_limit: float = 1000.0) -> CollectorConfig:
        ident, up_ident = self.prov_pki.collector("prov"), self.nat_pki.collector("prov")
        ups = (UpstreamConfig(name="national", url=self.nat.url, ca_file=self.nat_pki.ca_path,
                              cert_file=up_ident.cert_path, key_file=up_ident.key_path,
                              rate_limit=rate_limit, max_inflight=32, keepalive=5),)
        return CollectorConfig(
            source=self.tmp / "province.toml",
            collector=CollectorSection(role="province", region="320000",
                                       database=self.prov_db),
            broker=BrokerConfig(url=self.prov.url, ca_file=self.prov_pki.ca_path,
                                cert_file=ident.cert_path, key_file=ident.key_path,
                                client_id=client_id, share_group=share_group, keepalive=5),
            upstreams=ups)

    def national(self) -> CollectorConfig:
        ident = self.nat_pki.collector("nat")
        return CollectorConfig(
            source=self.tmp / "national.toml",
            collector=CollectorSection(role="national", region="100000",
                                       database=self.nat_db,
                                       trusted_ca=(self.prov_pki.ca_path,)),
            broker=BrokerConfig(url=self.nat.url, ca_file=self.nat_pki.ca_path,
                                cert_file=ident.cert_path, key_file=ident.key_path,
                                client_id="kemon-nat", keepalive=5))


@pytest.fixture(params=["sqlite-to-pg", "pg-to-sqlite"])
def levels(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Levels]:
    prov_pki = make_pki(tmp_path / "prov-pki", ca_name="Kemon Test Province CA")
    nat_pki = make_pki(tmp_path / "nat-pki", ca_name="Kemon Test National CA")
    pg: str = request.getfixturevalue("pg_url")
    sqlite = f"sqlite:///{tmp_path / 'collector.db'}"
    prov_db, nat_db = (sqlite, pg) if request.param == "sqlite-to-pg" else (pg, sqlite)
    with Broker(prov_pki, tmp_path / "prov", collectors=("prov",)) as prov, \
            Broker(nat_pki, tmp_path / "nat", collectors=("nat",), relays=("prov",)) as nat:
        yield Levels(tmp_path, prov_pki, nat_pki, prov, nat, prov_db, nat_db)


@contextlib.asynccontextmanager
async def running(cfg: CollectorConfig) -> AsyncIterator[Ingest]:
    ingest = Ingest(cfg, FAST)
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


@contextlib.contextmanager
def opened(url: str) -> Iterator[Storage]:
    s = open_storage(url)
    try:
        yield s
    finally:
        s.close()


def batches(url: str, gateway: str) -> int:
    with opened(url) as s:
        return next((g.batches for g in s.gateways() if g.gateway == gateway), 0)


def relay_of(ingest: Ingest) -> Any:
    [relay] = ingest.relays
    return relay


async def in_thread(func: Any, *args: Any) -> Any:
    return await asyncio.to_thread(func, *args)


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (pytest sees the same fixtures)."""
    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))
    return run


# --- the tests ----------------------------------------------------------------------------

@sync
async def test_national_outage_then_everything_arrives_once_with_its_relay_path(
        levels: Levels) -> None:
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    try:
        gw.birth()
        async with running(levels.national()), running(levels.province()) as prov:
            await in_thread(gw.publish, *range(1, 11))
            await until(lambda: batches(levels.nat_db, GW1) == 10, 30, "first 10 at national")

            levels.nat.stop()                       # the national platform goes away
            await in_thread(gw.publish, *range(11, 41))
            await until(lambda: batches(levels.prov_db, GW1) == 40, 30, "40 at the province")
            await asyncio.sleep(1.0)
            assert batches(levels.nat_db, GW1) == 10
            relay = relay_of(prov)
            assert not relay.connected

            levels.nat.start()                      # back after a while
            await until(lambda: batches(levels.nat_db, GW1) == 40, 60, "all 40 at national")
            await until(lambda: relay.counters.cursor > 0
                        and relay.counters.relayed >= 40, 10, "relay cursor")
    finally:
        gw.close()

    with opened(levels.nat_db) as nat, opened(levels.prov_db) as prov_s:
        assert sorted(stored(nat)) == sorted(stored(prov_s)) == sorted(gw.expected(range(1, 41)))
        assert nat.quarantine_counts() == {}
        [row] = nat.gateways()
        assert (row.unit, row.gateway, row.last_seq, row.gaps) == (UNIT, GW1, 40, 0)
        # the batches are the gateway's sealed bytes, unchanged, with the relay path
        # (in seq order: after the outage, what the national broker had queued for its
        # collector may arrive after the relay's first new batches)
        relayed = sorted(nat.relay_batches_after("none", 0, 100), key=lambda b: b.seq)
        assert [b.payload for b in relayed] == [gw.sealed[s] for s in range(1, 41)]
        assert {b.via for b in relayed} == {("320000",)}
        # the relay's announcement pinned the certificate but says nothing of online/offline
        assert nat.pinned_certificate(UNIT, GW1) == gw.files.cert_path.read_text()
        assert row.status in (None, "unknown")
        # the province's cursor is durable and covers everything
        assert prov_s.relay_cursor("national") == max(b.id for b in
                                                      prov_s.relay_batches_after("x", 0, 100))


@sync
async def test_a_batch_via_the_province_and_straight_from_the_gateway_is_stored_once(
        levels: Levels) -> None:
    """一端多传: the gateway reports to both platforms; the national gets each batch twice."""
    gw = Gateway(levels.prov, levels.prov_pki, GW2)
    # at the national broker the gateway has a national TLS identity, but it signs its batches
    # and presents its certificate exactly as at the province
    direct = MqttClient.connect(levels.nat, levels.nat_pki.gateway(UNIT, GW2))
    try:
        gw.birth()
        birth = {"status": "online", "unit": UNIT, "gateway": GW2, "version": "test",
                 "certificate": gw.files.cert_path.read_text()}
        direct.publish(f"kemon/v1/{UNIT}/{GW2}/up/status", json.dumps(birth), retain=True)
        async with running(levels.national()) as nat, running(levels.province()):
            gw.seal_upto(30)
            for seq in range(1, 31):
                await in_thread(gw.client.publish, gw.data_topic, gw.sealed[seq])
                await in_thread(direct.publish, gw.data_topic, gw.sealed[seq])
            await until(lambda: batches(levels.nat_db, GW2) == 30, 30, "30 at national")
            await until(lambda: nat.counters.duplicates >= 30, 30, "every copy seen twice")
            await asyncio.sleep(0.5)
            assert nat.counters.batches_stored == 30
    finally:
        direct.close()
        gw.close()
    with opened(levels.nat_db) as s:
        assert sorted(stored(s)) == sorted(gw.expected(range(1, 31)))
        assert s.quarantine_counts() == {}
        [row] = s.gateways()
        assert (row.batches, row.gaps, row.status) == (30, 0, "online")   # its own birth


@sync
async def test_a_restart_resends_only_what_was_not_acknowledged(levels: Levels) -> None:
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    try:
        gw.birth()
        async with running(levels.national()):
            async with running(levels.province()) as prov:
                await in_thread(gw.publish, *range(1, 21))
                await until(lambda: batches(levels.nat_db, GW1) == 20, 30, "20 at national")
                await until(lambda: relay_of(prov).counters.relayed == 20, 10, "20 acked")
            with opened(levels.prov_db) as s:
                cursor = s.relay_cursor("national")
                assert cursor == max(b.id for b in s.relay_batches_after("x", 0, 100))
            await in_thread(gw.publish, *range(21, 31))       # while the province is down
            async with running(levels.province()) as prov:
                await until(lambda: batches(levels.nat_db, GW1) == 30, 30, "30 at national")
                relay = relay_of(prov)
                await until(lambda: relay.counters.relayed == 10, 10, "the 10 new acked")
                await asyncio.sleep(0.5)
                assert relay.counters.relayed == 10             # not the 20 before them
                assert relay.counters.statuses == 1             # the certificate, once
    finally:
        gw.close()


@sync
async def test_a_refusing_upstream_moves_no_cursor_until_it_accepts(
        levels: Levels, caplog: pytest.LogCaptureFixture) -> None:
    levels.nat.stop()
    levels.nat.relays = ()                      # the national ACL does not know the province
    levels.nat.start()
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    caplog.set_level(logging.WARNING, logger="collector._relay")
    try:
        gw.birth()
        async with running(levels.national()), running(levels.province()) as prov:
            await in_thread(gw.publish, *range(1, 6))
            relay = relay_of(prov)
            await until(lambda: "(0x87)" in caplog.text, 20, "a refusal")
            assert "Not authorized" in caplog.text and relay.counters.refusals >= 1
            assert relay.counters.cursor == 0 and batches(levels.nat_db, GW1) == 0

            levels.nat.stop()
            levels.nat.relays = ("prov",)       # the ACL is mended
            levels.nat.start()
            await until(lambda: batches(levels.nat_db, GW1) == 5, 30, "5 at national")
    finally:
        gw.close()


@sync
async def test_nobody_subscribed_upstream_is_not_delivered(
        levels: Levels, caplog: pytest.LogCaptureFixture) -> None:
    """The national broker is up but its collector has never subscribed: the broker would
    drop the batches (PUBACK 0x10), so the relay waits for a subscriber instead."""
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    caplog.set_level(logging.WARNING, logger="collector._relay")
    try:
        gw.birth()
        async with running(levels.province()) as prov:
            await in_thread(gw.publish, *range(1, 6))
            relay = relay_of(prov)
            await until(lambda: "nobody subscribes" in caplog.text, 20, "no subscribers")
            assert relay.counters.refusals >= 1
            assert relay.counters.cursor == 0
            async with running(levels.national()):
                await until(lambda: batches(levels.nat_db, GW1) == 5, 30, "5 at national")
    finally:
        gw.close()
    with opened(levels.nat_db) as s:
        assert sorted(stored(s)) == sorted(gw.expected(range(1, 6)))


@sync
async def test_the_province_answers_the_national_resend_requests(levels: Levels) -> None:
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    watcher = MqttClient.connect(levels.nat, levels.nat_pki.collector("nat"), "watcher")
    try:
        gw.birth()
        watcher.subscribe(f"kemon/v1/{UNIT}/{GW1}/up/#")     # the certificate comes too
        async with running(levels.province()) as prov:
            await in_thread(gw.publish, *range(1, 6))
            await until(lambda: relay_of(prov).counters.relayed == 5, 30, "relayed")
            got = [await in_thread(watcher.messages.get, True, 5) for _ in range(6)]
            status = json.loads(got[0].payload)
            assert got[0].topic.endswith("/up/status") and not got[0].retain
            assert (status["status"], status["certificate"]) == (
                "online", gw.files.cert_path.read_text())
            assert [m.payload for m in got[1:]] == [gw.sealed[s] for s in range(1, 6)]
            assert {m.user_properties for m in got} == {(("kemon-via", "320000"),)}
            # the national platform asks for seqs 2..3 again (and for a gateway unknown here,
            # and in garbage)
            asker = await in_thread(MqttClient.connect, levels.nat,
                                    levels.nat_pki.collector("nat"), "asker")
            try:
                for gateway, body in ((GW1, json.dumps({"from_seq": 2, "to_seq": 3})),
                                      ("NOSUCH", json.dumps({"from_seq": 1, "to_seq": 3})),
                                      (GW1, "garbage")):
                    await in_thread(asker.publish, f"kemon/v1/{UNIT}/{gateway}/down/resend",
                                    body)
            finally:
                asker.close()
            again = [await in_thread(watcher.messages.get, True, 10) for _ in range(2)]
            assert [m.payload for m in again] == [gw.sealed[2], gw.sealed[3]]
            await until(lambda: relay_of(prov).counters.requests == 3, 10, "3 requests")
            assert relay_of(prov).counters.resent == 2
            assert relay_of(prov).counters.relayed == 5          # copies move no cursor
    finally:
        watcher.close()
        gw.close()


@sync
async def test_one_process_relays_the_other_stands_by_and_takes_over(levels: Levels) -> None:
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    try:
        gw.birth()
        async with running(levels.national()), contextlib.AsyncExitStack() as stack:
            # Two share groups, so that each process stores every batch (the database keeps
            # one copy): Mosquitto keeps what it handed a stopped member of one share group in
            # that member's session, which would leave a hole this test is not about.
            a = await stack.enter_async_context(
                running(levels.province(client_id="prov-a", share_group="a")))
            await until(lambda: relay_of(a).counters.leader, 10, "a leads")
            first_out = contextlib.AsyncExitStack()
            b = await first_out.enter_async_context(
                running(levels.province(client_id="prov-b", share_group="b")))
            await asyncio.sleep(1.0)
            assert not relay_of(b).counters.leader           # stands by
            await in_thread(gw.publish, *range(1, 11))
            await until(lambda: batches(levels.nat_db, GW1) == 10, 30, "10 relayed")
            assert relay_of(b).counters.relayed == 0
            # a stops; b takes the lease over within a few seconds and goes on from the cursor
            await stack.aclose()
            await until(lambda: relay_of(b).counters.leader, 15, "b takes over")
            await in_thread(gw.publish, *range(11, 21))
            await until(lambda: batches(levels.nat_db, GW1) == 20, 30, "20 relayed")
            await until(lambda: relay_of(b).counters.relayed == 10, 10, "b relayed 10")
            await first_out.aclose()
    finally:
        gw.close()
    with opened(levels.nat_db) as s:
        assert sorted(stored(s)) == sorted(gw.expected(range(1, 21)))


def _province_toml(levels: Levels) -> Path:
    ident, up = levels.prov_pki.collector("prov"), levels.nat_pki.collector("prov")
    path = levels.tmp / "province.toml"
    path.write_text(f"""
[collector]
role = "province"
region = "320000"
database = "{levels.prov_db}"

[broker]
url = "{levels.prov.url}"
ca_file = "{levels.prov_pki.ca_path}"
cert_file = "{ident.cert_path}"
key_file = "{ident.key_path}"
client_id = "prov-process"
keepalive = 5

[[upstream]]
name = "national"
url = "{levels.nat.url}"
ca_file = "{levels.nat_pki.ca_path}"
cert_file = "{up.cert_path}"
key_file = "{up.key_path}"
rate_limit = 40.0
max_inflight = 8
""", encoding="utf-8")
    return path


@sync
async def test_kill_9_of_the_relaying_province_process_loses_nothing(levels: Levels) -> None:
    """`kemon collector run` relays at 40 batches/s; SIGKILL halfway; a new process finishes
    from the durable cursor: the national side gets every batch, each stored once."""
    config = _province_toml(levels)
    gw = Gateway(levels.prov, levels.prov_pki, GW1)
    logs = [levels.tmp / "prov1.log", levels.tmp / "prov2.log"]
    procs: list[subprocess.Popen[bytes]] = []

    def start(log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            procs.append(subprocess.Popen(kemon_cmd("collector", "run", "-c", str(config)),
                                          cwd=ROOT, stdout=out, stderr=out))
        return procs[-1]

    try:
        gw.birth()
        async with running(levels.national()) as nat:
            first = start(logs[0])
            await until(lambda: "(new session), receive maximum" in logs[0].read_text()
                        or first.poll() is not None, 30, "the province subscribed")
            assert first.poll() is None, logs[0].read_text()
            await in_thread(gw.publish, *range(1, 121))
            await until(lambda: batches(levels.prov_db, GW1) == 120, 60, "120 at the province")
            await until(lambda: batches(levels.nat_db, GW1) >= 30, 30, "relaying under way")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            with opened(levels.prov_db) as s:
                cursor = s.relay_cursor("national")
            got = batches(levels.nat_db, GW1)
            assert 0 < got < 120, "the kill must land mid-relay"

            second = start(logs[1])
            await until(lambda: batches(levels.nat_db, GW1) == 120, 60, "all 120 at national")
            second.send_signal(signal.SIGTERM)
            assert await in_thread(second.wait, 30) == 0
            text = logs[1].read_text()
            assert f"from batch id {cursor}" in text, text
            # what travelled twice is at most the window in flight at the kill, plus what was
            # acknowledged in the last 100 ms before it: stored once all the same
            assert nat.counters.duplicates <= 120 - cursor
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        gw.close()
    with opened(levels.nat_db) as s:
        assert sorted(stored(s)) == sorted(gw.expected(range(1, 121)))
        assert s.quarantine_counts() == {}
