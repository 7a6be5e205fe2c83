"""The outbox over a real store: sealing into a signed hash chain, per-destination cursors,
retention that spares undelivered data, and the gap record when the budget forces eviction;
and the downlink handler on top of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway._downlink import Downlink
from gateway._outbox import Outbox
from gateway._store import Store
from protocol import ZERO_HASH, Period, Reading, batch_hash, unseal

UNIT, GW = "91320100MA1ABCDE0C", "GW1"
T0 = 1_795_795_200_000          # 2026-11-28T00:00:00+08:00
KEY = ec.generate_private_key(ec.SECP256R1())


def cycle(n: int, points: int = 50) -> list[Reading]:
    return [Reading(f"m.p{i:02d}", Period.INSTANT, T0 + n * 60_000, n * 100.0 + i)
            for i in range(points)]


def outbox(store: Store, destinations: Sequence[str] = ("province", "national")) -> Outbox:
    return Outbox(store, unit=UNIT, gateway=GW, key=KEY, destinations=destinations)


def chain(box: Outbox) -> list:
    batches = [unseal(p, KEY.public_key()) for _, p in box.batches_after(0, 10_000)]
    prev = ZERO_HASH
    for (seq, payload), b in zip(box.batches_after(0, 10_000), batches, strict=True):
        assert b.seq == seq and b.prev == prev and (b.unit, b.gateway) == (UNIT, GW)
        prev = batch_hash(payload)
    return batches


def test_sealing_makes_a_signed_chain_of_every_reading(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        box = outbox(store)
        for n in range(9):
            store.append_cycle(cycle(n))          # 450 readings
        assert box.seal_pending() == 3          # 200 + 200 + 50
        assert box.seal_pending() == 0
        store.append_cycle(cycle(9))
        assert box.seal_pending() == 1
        batches = chain(box)
        got = [r for b in batches for r in b.readings]
        assert got == [r for n in range(10) for r in cycle(n)]
        assert [len(b.readings) for b in batches] == [200, 200, 50, 50]
        assert {b.kind for b in batches} == {"data"}


def test_the_chain_continues_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        store.append_cycle(cycle(0))
        outbox(store).seal_pending()
    with Store(path) as store:
        store.append_cycle(cycle(1))
        box = outbox(store)
        box.seal_pending()
        assert [b.seq for b in chain(box)] == [1, 2]


def test_cursors_are_per_destination_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with Store(path) as store:
        box = outbox(store)
        for n in range(8):
            store.append_cycle(cycle(n))
        box.seal_pending()
        box.ack("province", 2)
        assert [s.pending for s in box.status()] == [0, 2]
        assert box.acked_seq("national") == 0
        assert [s for s, _ in box.batches_after(box.acked_seq("national"), 10)] == [1, 2]
    with Store(path) as store:
        box = outbox(store)
        assert (box.acked_seq("province"), box.acked_seq("national")) == (2, 0)


def test_retention_spares_what_a_destination_lacks(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", retention_days=1) as store:
        box = outbox(store)
        for n in range(8):
            store.append_cycle(cycle(n))
        box.seal_pending()
        box.ack("province", box.last_seq())
        late = T0 + 10 * 86_400_000           # everything is older than the retention
        box.prune(now_ms=late)
        assert store.count() == 400           # national has acknowledged nothing: all kept
        box.ack("national", 1)
        box.prune(now_ms=late)
        assert store.count() == 200           # batch 1's readings went; batch 2's stay
        assert [s for s, _ in box.batches_after(0, 10)] == [2]
        store.append_cycle(cycle(100))        # not sealed yet: protected too
        box.ack("national", 2)
        box.prune(now_ms=late + 100 * 60_000)
        assert store.count() == 50


def test_budget_exhausted_by_undelivered_data_seals_a_gap(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db", disk_budget_bytes=24 * 1024 * 1024) as store:
        box = outbox(store, ("province",))
        n = 0
        while store.used_bytes() < 13 * 1024 * 1024:    # the budget's mark is 12 MiB
            for _ in range(50):
                store.append_cycle(cycle(n, points=200))
                n += 1
            box.seal_pending()
        before = box.last_seq()
        box.prune(now_ms=T0)
        assert store.budget_excess() == 0
        gap = unseal(box.batches_after(before, 10)[-1][1], KEY.public_key())
        assert gap.kind == "gap" and gap.seq == before + 1 and gap.readings == ()
        first, last = gap.info["lost_seq"]
        assert first == 1 and last < before
        assert gap.info["readings"] == last * 200
        assert box.acked_seq("province") == last       # the lost ones cannot be sent
        remaining = [s for s, _ in box.batches_after(box.acked_seq("province"), 100_000)]
        assert remaining == list(range(last + 1, before + 2))


class Republished:
    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def __call__(self, batches: Sequence[tuple[int, bytes]]) -> None:
        self.calls.append([s for s, _ in batches])


def test_downlink_messages(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Store(tmp_path / "s.db") as store:
        box = outbox(store)
        for n in range(8):
            store.append_cycle(cycle(n))
        box.seal_pending()
        province = Republished()
        woken = []
        down = Downlink(store, box, {"province": province, "national": Republished()},
                        on_sealed=lambda: woken.append(1))

        def send(kind: str, body: object) -> None:
            raw = body if isinstance(body, bytes) else json.dumps(body).encode()
            asyncio.run(down.handle("province", kind, raw))

        send("notice", {"title": "季度能耗通报", "text": "请于月底前完成计量器具检定"})
        (notice,) = store.read("SELECT destination, body FROM notice")
        assert notice[0] == "province" and "季度能耗通报" in notice[1]

        send("resend", {"from_seq": 1, "to_seq": 2})
        assert province.calls == [[1, 2]]

        send("resend", {"since": "2026-11-28T00:01:00+08:00", "until": "2026-11-28T00:03:00"})
        resent = unseal(box.batches_after(2, 10)[-1][1], KEY.public_key())
        assert resent.kind == "resend" and len(resent.readings) == 100
        assert {r.ts for r in resent.readings} == {T0 + 60_000, T0 + 120_000}
        assert woken

        send("time", {"ts": "2000-01-01T00:00:00+08:00"})
        assert store.load_state("time_hint")["offset_ms"] > 0
        assert "off" in caplog.text

        last = box.last_seq()
        for kind, body in [("resend", b"\xff\xfe"), ("resend", {"from_seq": 5, "to_seq": 1}),
                           ("resend", {"from_seq": "1", "to_seq": 2}), ("resend", [1, 2]),
                           ("resend", {"since": "yesterday", "until": "today"}),
                           ("notice", b"x" * 70_000), ("reboot", {}), ("time", {}),
                           ("notice", b"[" * 100_000)]:
            send(kind, body)
        assert box.last_seq() == last                   # nothing sealed from garbage
        assert caplog.text.count("dropped") == 9
