"""One publisher process of the fleet benchmark: many simulated gateways on one asyncio loop.

Started by bench/bench_fleet.py as ``python bench/_fleet_publisher.py ARGS_JSON``. Each gateway
is a :class:`~bench._mqtt_lite.LiteConnection` (MQTT 5, mutual TLS with its own certificate
and key), publishes its retained birth (``up/status``: ``online``, version, certificate PEM,
ts — the form ``gateway/_uplink.py`` sends; will: ``offline``), then one sealed batch a quarter
(``bench._fleet_plan``: seq 1, 2, … hash-chained, ECDSA P-256 signed by the gateway's key).

Talks to the parent in JSON lines: on stdout ``{"event": "ready", …}`` once every gateway is
connected and its birth acknowledged, ``{"event": "status", …}`` every ``status_every``
seconds, ``{"event": "done", …}`` at the end; on stdin one line ``start <t0>`` (t0 in seconds
since the epoch: quarter 0 begins then). Each batch's send and PUBACK times go to
``sends_path`` (``unit gateway seq sent_ms acked_ms``, one line a batch).

A connection that ends is opened again at the gateway's next publication, and every batch not
acknowledged on it is published again first (at-least-once, as the real uplink does); such
events are counted (``reconnects``, ``republished``), so the report shows they did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import resource
import ssl
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._fleet_plan import (  # noqa: E402
    QUARTER_MS,
    SIM_EPOCH,
    gateway_files,
    identity,
    offset,
    readings,
)
from bench._mqtt_lite import FAILURE, LiteConnection, MqttLiteError  # noqa: E402
from protocol import ZERO_HASH, Batch, batch_hash, seal, topic  # noqa: E402
from provisioning import load_key  # noqa: E402

log = logging.getLogger("bench_fleet.publisher")

VERSION = "bench-fleet"


@dataclass
class Sim:
    """One simulated gateway."""

    i: int
    unit: str
    gateway: str
    tls: ssl.SSLContext
    key: ec.EllipticCurvePrivateKey
    cert_pem: str
    conn: LiteConnection | None = None
    prev: bytes = ZERO_HASH
    sealed: dict[int, bytes] = field(default_factory=dict)        # seq → bytes, not yet acked
    inflight: dict[int, int] = field(default_factory=dict)        # packet id → seq (0: birth)
    sent_ms: dict[int, int] = field(default_factory=dict)
    acked_ms: dict[int, int] = field(default_factory=dict)
    birth_acked: asyncio.Event = field(default_factory=asyncio.Event)
    failures: int = 0

    @property
    def data_topic(self) -> str:
        return topic(self.unit, self.gateway, "up", "data")

    @property
    def status_topic(self) -> str:
        return topic(self.unit, self.gateway, "up", "status")


class Publisher:
    def __init__(self, args: dict[str, Any]) -> None:
        self.a = args
        self.host: str = args["host"]
        self.port: int = args["port"]
        self.quarter: float = args["quarter"]
        self.spread: float = args["spread"]
        self.quarters: int = args["quarters"]
        self.points: int = args["points"]
        self.keepalive: int = args["keepalive"]
        self.sims: list[Sim] = []
        self.t0 = 0.0                       # monotonic time of quarter 0
        self.reconnects = 0
        self.republished = 0
        self.late_seals = 0
        self.connect_failures = 0
        self.lag: list[float] = []          # seconds a publication left after its schedule
        self.seal_seconds = 0.0

    # --- set-up ---------------------------------------------------------------------------

    def load(self) -> None:
        pki = Path(self.a["pki_dir"])
        ca = self.a["ca"]
        for i in range(self.a["first"], self.a["stop"]):
            cert_path, key_path = gateway_files(pki, i)
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(str(cert_path), str(key_path))
            unit, gw = identity(i)
            self.sims.append(Sim(i, unit, gw, ctx, load_key(key_path), cert_path.read_text()))

    def _on_ack(self, sim: Sim) -> Any:
        def on_ack(packet_id: int, reason: int, _t: float) -> None:
            seq = sim.inflight.pop(packet_id, None)
            if seq is None:
                return
            if reason >= FAILURE:
                sim.failures += 1
                log.error("%s: PUBACK reason 0x%02x for seq %d", sim.gateway, reason, seq)
                return
            if seq == 0:
                sim.birth_acked.set()
                return
            sim.acked_ms.setdefault(seq, int(time.time() * 1000))
            sim.sealed.pop(seq, None)
        return on_ack

    async def _open(self, sim: Sim) -> None:
        will = json.dumps({"status": "offline", "reason": "connection lost"}).encode()
        attempt = 0
        while True:
            conn = LiteConnection(self.host, self.port, sim.tls, f"fleet-{sim.i}",
                                  keepalive=self.keepalive, will=(sim.status_topic, will),
                                  on_ack=self._on_ack(sim))
            try:
                await conn.connect(within=self.a["connect_timeout"])
            except (OSError, MqttLiteError, TimeoutError, ssl.SSLError) as exc:
                self.connect_failures += 1
                attempt += 1
                if attempt >= 5:
                    raise
                log.warning("%s: connect failed (%s); again", sim.gateway, exc)
                await asyncio.sleep(0.5 * attempt)
                continue
            sim.conn = conn
            sim.inflight.clear()
            return

    def _birth(self, sim: Sim) -> None:
        assert sim.conn is not None
        doc = {"status": "online", "unit": sim.unit, "gateway": sim.gateway, "version": VERSION,
               "certificate": sim.cert_pem, "ts": int(time.time() * 1000)}
        pid = sim.conn.publish(sim.status_topic, json.dumps(doc).encode(), retain=True)
        sim.inflight[pid] = 0

    async def connect_all(self) -> float:
        """Every gateway connected and its birth acknowledged; seconds it took."""
        start = time.monotonic()
        gate = asyncio.Semaphore(self.a["connect_concurrency"])

        async def one(sim: Sim) -> None:
            async with gate:
                await self._open(sim)
                self._birth(sim)
                await sim.birth_acked.wait()

        async with asyncio.TaskGroup() as tg:
            for sim in self.sims:
                tg.create_task(one(sim))
        return time.monotonic() - start

    # --- sealing ----------------------------------------------------------------------------

    def _seal_one(self, sim: Sim, k: int) -> None:
        seq = k + 1
        if seq in sim.sealed or seq in sim.acked_ms:
            return
        t = time.process_time()           # CPU, not wall time: the machine is shared
        created = SIM_EPOCH + k * QUARTER_MS + 5_000     # sealed 5 s into the field's quarter
        data = seal(Batch(sim.unit, sim.gateway, seq, sim.prev, "data", created,
                          readings(sim.i, k, self.points)), sim.key)
        self.seal_seconds += time.process_time() - t
        sim.prev = batch_hash(data)
        sim.sealed[seq] = data

    async def seal_quarter(self, k: int) -> None:
        for n, sim in enumerate(self.sims):
            self._seal_one(sim, k)
            if n % 25 == 24:
                await asyncio.sleep(0)          # keep the loop answering PUBACKs and pings

    async def _sealer(self) -> None:
        """Seal quarter k+1's batches halfway through quarter k (a gateway seals its batch
        from its store before the quarter ends; here ahead of time, off the burst)."""
        for k in range(1, self.quarters):
            await self._sleep_until(self.t0 + (k - 1 + self.a["seal_at"]) * self.quarter)
            await self.seal_quarter(k)

    # --- the schedule -----------------------------------------------------------------------

    async def _sleep_until(self, when: float) -> None:
        delay = when - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _gateway(self, sim: Sim) -> None:
        for k in range(self.quarters):
            due = self.t0 + k * self.quarter + offset(sim.i, k, self.spread, self.a["seed"])
            await self._sleep_until(due)
            if sim.conn is None or sim.conn.closed.is_set():
                log.warning("%s: connection ended (%s); reconnecting", sim.gateway,
                            sim.conn.error if sim.conn else "never opened")
                self.reconnects += 1
                try:
                    await self._open(sim)
                except (OSError, MqttLiteError, TimeoutError, ssl.SSLError):
                    continue                    # next quarter, again
                for seq in sorted(sim.sealed):
                    if seq <= k and seq in sim.sent_ms:
                        self._send(sim, seq)
                        self.republished += 1
            if k + 1 not in sim.sealed:
                self.late_seals += 1
                self._seal_one(sim, k)
            self.lag.append(time.monotonic() - due)
            self._send(sim, k + 1)

    def _send(self, sim: Sim, seq: int) -> None:
        assert sim.conn is not None
        sim.sent_ms.setdefault(seq, int(time.time() * 1000))
        try:
            pid = sim.conn.publish(sim.data_topic, sim.sealed[seq])
        except MqttLiteError:
            return                              # sent again after the reconnection
        sim.inflight[pid] = seq

    def write_sends(self, path: Path) -> None:
        """One line a batch: ``unit gateway seq sent_ms acked_ms`` (-1: never acknowledged)."""
        with path.open("w", encoding="ascii") as out:
            for s in self.sims:
                for seq, sent in sorted(s.sent_ms.items()):
                    out.write(f"{s.unit} {s.gateway} {seq} {sent} {s.acked_ms.get(seq, -1)}\n")

    def counts(self) -> dict[str, Any]:
        open_ = sum(1 for s in self.sims if s.conn is not None and not s.conn.closed.is_set())
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"gateways": len(self.sims), "connected": open_,
                "published": sum(len(s.sent_ms) for s in self.sims),
                "acked": sum(len(s.acked_ms) for s in self.sims),
                "failed_acks": sum(s.failures for s in self.sims),
                "reconnects": self.reconnects, "republished": self.republished,
                "connect_failures": self.connect_failures, "late_seals": self.late_seals,
                "seal_s": round(self.seal_seconds, 2),
                "cpu_s": round(ru.ru_utime + ru.ru_stime, 2)}

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.a["status_every"])
            emit({"event": "status", **self.counts()})

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.load()
        took = await self.connect_all()
        await self.seal_quarter(0)
        emit({"event": "ready", "connect_s": round(took, 2), **self.counts()})
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line.startswith("start "):
            raise SystemExit(f"publisher: expected 'start <t0>', got {line!r}")
        self.t0 = time.monotonic() + float(line.split()[1]) - time.time()
        status = asyncio.create_task(self._status(), name="publisher.status")
        sealer = asyncio.create_task(self._sealer(), name="publisher.sealer")
        async with asyncio.TaskGroup() as tg:
            for sim in self.sims:
                tg.create_task(self._gateway(sim), name=f"publisher[{sim.gateway}]")
        deadline = time.monotonic() + self.a["ack_timeout"]
        # the condition is spread over every gateway's state: polled, a few times a second
        while time.monotonic() < deadline and any(s.sealed for s in self.sims):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
        status.cancel()
        sealer.cancel()
        self.lag.sort()
        n = len(self.lag)
        emit({"event": "done", **self.counts(),
              "lag_p50_ms": round(self.lag[n // 2] * 1000, 1) if n else None,
              "lag_p99_ms": round(self.lag[min(n - 1, n * 99 // 100)] * 1000, 1) if n else None,
              "lag_max_ms": round(self.lag[-1] * 1000, 1) if n else None})
        await asyncio.to_thread(self.write_sends, Path(self.a["sends_path"]))
        line = await loop.run_in_executor(None, sys.stdin.readline)   # "close" (or EOF)
        async with asyncio.TaskGroup() as tg:
            for sim in self.sims:
                if sim.conn is not None:
                    tg.create_task(sim.conn.close())


def emit(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def raise_nofile() -> None:
    """The soft limit on open files up to the hard limit (each connection is a descriptor)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s publisher: %(message)s")
    raise_nofile()
    args = json.loads(sys.argv[1])
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Publisher(args).run())


if __name__ == "__main__":
    main()
