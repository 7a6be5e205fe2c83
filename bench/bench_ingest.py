"""Collector ingest benchmark: how fast ``kemon collector run``'s ingest stores a stream of sealed
batches from a local Mosquitto (mutual TLS) into SQLite and into PostgreSQL — verification on —
side by side with the broker's ceiling and the database's ceiling, and with two processes.

Run: ``.venv/bin/python bench/bench_ingest.py`` (about seven minutes; ``--readings 100000
--rounds 1`` for a smoke run; ``--profile`` adds a cProfile pass of the verify and store stages).

**The stream.** 50 gateways (``--gateways``), each with its own certificate, each a 50-point
site like bench/bench_drain.py's (float32, DL/T 645 BCD and scaled-integer meters), sealed in
batches of 200 readings (ECDSA P-256, hash chained from seq 1): 1,000,000 readings by default,
5,000 messages of about 1.2 kB. Sealed once (not timed); every timed run gets the same bytes.
Every gateway's birth (retained, carrying its certificate) is on the broker before any run.

**Pre-published, not published concurrently: why.** For each timed run a fresh persistent
session is made first (the consumer connects, subscribes, and — for the collector — stores
the births and pins the certificates; then it disconnects), the whole stream is then
published into the broker, which queues it for the offline session, and the timer starts when
the consumer starts again. The broker then sends as fast as the consumer acknowledges: the
figure is the consumer's, the same way for Kemon and for the ceiling. A publisher running
concurrently on this 2-core machine would take a core from the collector and the broker (50
TLS connections, Python), so the figure would partly measure the publisher, and differently
for each consumer. It is also the case that matters: a collector catching up with a backlog
the broker kept while it was down. Each gateway publishes over its own connection with its
own certificate, interleaved (every gateway's batch 1, then every batch 2, …), so a group of
messages holds many gateways, as live traffic does.

**Timed.** Kemon: ``collector._ingest.Ingest`` — what ``kemon collector run`` runs — in its own
process (bench/_ingest_child.py), database and broker as configured (``[collector] queue``
10,000, so Receive Maximum 10,000), from the moment the already-imported process is told to
go (opening the database, connecting, TLS, subscribing included) until every message is
stored and acknowledged. Every batch is verified: size, topic, header, identity, the pinned
certificate's signature, the hash chain against storage; the readings are stored exactly
once (``ON CONFLICT`` on the reading key), batches, inventory and all, then PUBACKed.
Checked after each run: nothing quarantined, every reading newly stored, the row count.

**Ceiling 1, the broker's:** ``mosquitto_sub`` (C, libmosquitto; MQTT 5, QoS 1, the same
shared subscription, TLS, the collector's certificate, a persistent session, the same Receive
Maximum) consuming the same pre-published stream to /dev/null, from process start until it
exits after the last message (``-C``). It acknowledges each message as it arrives, parses
nothing and stores nothing: no consumer can take messages off this broker faster.

**Ceiling 2, the database's:** the same readings (decoded beforehand, not timed) as rows of
the collector's own ``reading`` table (same schema, primary key and, on SQLite, the same
PRAGMAs: WAL, ``synchronous=FULL``), inserted in one transaction per 200 messages (the
collector's group size: 40,000 rows), rows in key order as the collector sorts them. SQLite:
``executemany`` of a plain ``INSERT``; PostgreSQL: ``COPY … FROM STDIN (FORMAT BINARY)`` of a
buffer encoded beforehand. No batch rows, no inventory, no verification, no lookups: the
database's own speed for these rows.

**Figures.** readings/s = stream readings / seconds. "of lower ceiling" = Kemon / the lower of
the two ceilings for that back end. Issue 4's goals: ≥ 100,000 readings/s into each back end
and ≥ 0.5 of the lower ceiling; two collector processes in one share group ≥ 1.6x one. Peak
RSS is the collector process's (``VmHWM``). Every figure is the median of ``--rounds``
runs (default 3). Beside them, the CPU seconds the collector process(es), the broker and the
PostgreSQL server (postmaster and backends) used during each Kemon run (psutil), and how many
cores that keeps busy: on a 2-core machine that says whether two processes can scale at all.

The broker is tests/brokers.py's Mosquitto (mutual TLS, the Kemon ACL, persistence) with
``max_inflight_messages 1000``; PostgreSQL is tests/pg.py's private cluster (a fresh
database for every run); SQLite files are in a temporary directory on the local disk.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import io
import json
import logging
import os
import pstats
import queue
import signal
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import psycopg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._ingest_stream import (  # noqa: E402
    PER_BATCH,
    UNIT,
    GatewayStream,
    decoded,
    interleaved,
    make_stream,
    publish_births,
    publish_stream,
)
from bench.bench_drain import machine  # noqa: E402
from collector._ingest import _GC_OLDER, _GC_YOUNG  # noqa: E402
from collector._ingest_stages import Stages  # noqa: E402
from collector._ingest_state import GroupLookups  # noqa: E402
from collector._mqtt import Incoming  # noqa: E402
from collector._schema import PERIOD_CODES, QUALITY_CODES  # noqa: E402
from collector._storage import open_storage  # noqa: E402
from collector._verify import Verifier  # noqa: E402
from tests.brokers import Broker, ClientFiles, make_pki  # noqa: E402
from tests.pg import PostgresCluster  # noqa: E402

log = logging.getLogger("bench_ingest")

READINGS = 1_000_000
GATEWAYS = 50
QUEUE = 10_000              # [collector] queue (default): the Receive Maximum it announces
GROUP = 200                 # IngestOptions.group_size: messages a transaction
BROKER_INFLIGHT = 1000      # Mosquitto max_inflight_messages
GOAL_READINGS_S = 100_000   # issue 4: ≥ 100,000 readings/s into each back end …
GOAL_RATIO = 0.5            # … and ≥ 0.5 of the lower ceiling
GOAL_SCALING = 1.6          # two processes ≥ 1.6x one
RUN_TIMEOUT = 900.0
_INGEST_GC = (_GC_YOUNG, _GC_OLDER, _GC_OLDER)
CHILD = Path(__file__).resolve().parent / "_ingest_child.py"
MOSQUITTO_SUB = "mosquitto_sub"


# ------------------------------------------------------------------------- collector runs

@dataclass(frozen=True, slots=True)
class KemonRun:
    backend: str
    processes: int
    readings: int
    messages: int
    seconds: float
    groups: int
    maxrss_kib: tuple[int, ...]
    cpu_s: dict[str, float]             # CPU seconds during the run: collector, broker, database
    split: tuple[int, ...]              # messages each process took
    phases: tuple[float, float]         # seconds from go to the first message, first PUBACK

    @property
    def rate(self) -> float:
        return self.readings / self.seconds


def _tree(pid: int) -> list[psutil.Process]:
    """``pid`` and its descendants (those that can still be read)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class CpuWatch:
    """CPU time (user + system) of the collector processes, the broker and the PostgreSQL
    server (postmaster and every backend) between :meth:`start` and :meth:`stop`. A process
    that starts meanwhile (a new backend) counts from zero; one that ends meanwhile is lost
    (none does during a timed run)."""

    def __init__(self, parts: dict[str, list[int]]) -> None:
        self.parts = parts
        self._began: dict[tuple[str, int], float] = {}

    def _read(self) -> dict[tuple[str, int], float]:
        out: dict[tuple[str, int], float] = {}
        for name, pids in self.parts.items():
            for pid in pids:
                for proc in _tree(pid):
                    with contextlib.suppress(psutil.Error):
                        t = proc.cpu_times()
                        out[name, proc.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self._began = self._read()

    def stop(self) -> dict[str, float]:
        totals = dict.fromkeys(self.parts, 0.0)
        for (name, pid), now in self._read().items():
            totals[name] += now - self._began.get((name, pid), 0.0)
        return totals


class Child:
    """One collector process (bench/_ingest_child.py); its JSON lines go to ``lines``."""

    def __init__(self, args: dict[str, Any], index: int, lines: queue.Queue[Any],
                 stderr: Path) -> None:
        self.index = index
        with stderr.open("ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(CHILD), json.dumps(args)],
                                         cwd=ROOT, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=err)
        self.stderr = stderr
        self._lines = lines
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self._lines.put((self.index, json.loads(raw)))
        self._lines.put((self.index, None))

    def say(self, line: str) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def finish(self, timeout: float = 60) -> None:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(5)

    def failure(self) -> str:
        return f"collector process exited with {self.proc.poll()}:\n" + \
            self.stderr.read_text(errors="replace")[-3000:]


@dataclass
class Bench:
    """What every run shares: the broker, the identities, the stream, the work directory."""

    work: Path
    broker: Broker
    collector: ClientFiles
    streams: list[GatewayStream]
    runs: int = 0
    postmaster: int | None = None       # the PostgreSQL server's pid (for CPU accounting)

    @property
    def messages(self) -> int:
        return sum(len(s.batches) for s in self.streams)

    @property
    def readings(self) -> int:
        return self.messages * PER_BATCH

    def tag(self, what: str) -> str:
        self.runs += 1
        return f"{what}-{self.runs}"

    def child_args(self, database: str, client_id: str, share: str) -> dict[str, Any]:
        return {"source": str(self.work / "collector.toml"), "database": database,
                "url": self.broker.url, "ca": str(self.collector.ca_path),
                "cert": str(self.collector.cert_path), "key": str(self.collector.key_path),
                "client_id": client_id, "share_group": share, "queue": QUEUE,
                "births": len(self.streams)}

    def children(self, database: str, tag: str, processes: int,
                 lines: queue.Queue[Any]) -> list[Child]:
        return [Child(self.child_args(database, f"bench-{tag}-{i}", f"bench-{tag}"), i, lines,
                      self.work / f"{tag}-{i}.stderr") for i in range(processes)]

    def kemon(self, backend: str, database: str, processes: int) -> KemonRun:
        """Prime ``processes`` sessions, pre-publish the stream, then time the ingest."""
        tag = self.tag(f"{backend}{processes}")
        lines: queue.Queue[Any] = queue.Queue()
        primers = self.children(database, tag, processes, lines)
        for c in primers:
            c.say("prime")
        for c in primers:
            c.finish(60)
            if c.proc.returncode != 0:
                raise RuntimeError(c.failure())
        publish_stream(self.broker, self.streams, tag)
        lines = queue.Queue()
        children = self.children(database, tag, processes, lines)
        try:
            return self._timed(backend, children, lines, processes)
        finally:
            for c in children:
                c.say("stop")
            for c in children:
                c.finish(60)

    def _timed(self, backend: str, children: list[Child], lines: queue.Queue[Any],
               processes: int) -> KemonRun:
        ready: set[int] = set()
        while len(ready) < len(children):
            index, doc = lines.get(timeout=60)
            if doc is None:
                raise RuntimeError(children[index].failure())
            ready.add(index)
        parts = {"collector": [c.proc.pid for c in children],
                 "broker": [self.broker.proc.pid] if self.broker.proc is not None else []}
        if backend == "postgresql" and self.postmaster is not None:
            parts["database"] = [self.postmaster]
        cpu = CpuWatch(parts)
        cpu.start()
        for c in children:
            c.say("go")
        latest: dict[int, dict[str, Any]] = {}
        first_message: dict[int, float] = {}
        first_ack: dict[int, float] = {}
        deadline = time.monotonic() + RUN_TIMEOUT
        while sum(d["acked"] for d in latest.values()) < self.messages:
            try:
                index, doc = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"not done within {RUN_TIMEOUT:.0f} s: {latest}") from None
            if doc is None:
                raise RuntimeError(children[index].failure())
            latest[index] = doc
            if doc["messages"] and index not in first_message:
                first_message[index] = doc["t"]
            if doc["acked"] and index not in first_ack:
                first_ack[index] = doc["t"]
        end = max(d["t"] for d in latest.values())
        cpu_s = cpu.stop()
        for c in children:
            c.say("stop")
        finals: dict[int, dict[str, Any]] = {}
        while len(finals) < len(children):
            index, doc = lines.get(timeout=60)
            if doc is None:
                if index not in finals:
                    raise RuntimeError(children[index].failure())
                continue
            if doc.get("final"):
                finals[index] = doc
        began = min(d["t0"] for d in finals.values())
        phases = (min(first_message.values()) - began, min(first_ack.values()) - began)
        readings = sum(d["readings"] for d in finals.values())
        quarantined = sum(d["quarantined"] for d in finals.values())
        if readings != self.readings or quarantined:
            raise RuntimeError(f"stored {readings:,} readings of {self.readings:,}, "
                               f"{quarantined} quarantined: {finals}")
        return KemonRun(backend, processes, readings, self.messages, end - began,
                        sum(d["groups"] for d in finals.values()),
                        tuple(d["maxrss_kib"] for d in finals.values()), cpu_s,
                        tuple(finals[i]["messages"] for i in sorted(finals)), phases)

    # --------------------------------------------------------------------- ceiling 1

    def mosquitto_sub(self, client_id: str, share: str, *extra: str) -> list[str]:
        files = self.collector
        return [MOSQUITTO_SUB, "-h", self.broker.host, "-p", str(self.broker.port),
                "--cafile", str(files.ca_path), "--cert", str(files.cert_path),
                "--key", str(files.key_path), "-V", "mqttv5", "-c", "-x", "3600",
                "-i", client_id, "-q", "1", "-t", f"$share/{share}/kemon/v1/+/+/up/data",
                "-D", "connect", "receive-maximum", str(QUEUE), *extra]

    def broker_ceiling(self) -> float:
        """Seconds ``mosquitto_sub`` takes to consume the pre-published stream."""
        tag = self.tag("sub")
        client_id, share = f"bench-{tag}", f"bench-{tag}"
        subprocess.run(self.mosquitto_sub(client_id, share, "-E"), check=True, timeout=30,
                       stdout=subprocess.DEVNULL)
        publish_stream(self.broker, self.streams, tag)
        began = time.perf_counter()
        subprocess.run(self.mosquitto_sub(client_id, share, "-C", str(self.messages)),
                       check=True, timeout=RUN_TIMEOUT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - began


# ------------------------------------------------------------------------- ceiling 2

_COPY_ROW = struct.Struct(">hiqidiiiiihih")     # 6 fields: int8, float8, int4, int4, int2, int2
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)   # PostgreSQL COPY BINARY
_COPY_TRAILER = struct.pack(">h", -1)
_COLUMNS = "(ts, value, gateway_id, point_id, period, quality)"


def grouped_rows(batches: Sequence[tuple[str, tuple[Any, ...]]], gateway_ids: dict[str, int],
                 point_ids: dict[str, int]) -> list[list[tuple[int, float, int, int, int, int]]]:
    """``reading`` rows, GROUP messages a transaction, each group in key order."""
    groups = []
    for at in range(0, len(batches), GROUP):
        rows = [(r.ts, r.value, gateway_ids[gw], point_ids[r.point], PERIOD_CODES[r.period],
                 QUALITY_CODES[r.quality]) for gw, readings in batches[at:at + GROUP]
                for r in readings]
        rows.sort(key=lambda row: (row[2], row[0], row[3], row[4]))
        groups.append(rows)
    return groups


def sqlite_ceiling(path: Path, batches: Sequence[tuple[str, tuple[Any, ...]]]) -> float:
    """Seconds to insert the rows into a fresh collector database (see the docstring)."""
    open_storage(f"sqlite:///{path}").close()          # the schema, exactly
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cache_size = -16384")      # as collector._sqlite_storage
        gateways = sorted({gw for gw, _ in batches})
        points = sorted({r.point for _, readings in batches for r in readings})
        conn.executemany("INSERT INTO gateway (unit, gateway) VALUES (?, ?)",
                         [(UNIT, g) for g in gateways])
        conn.executemany("INSERT INTO point (code) VALUES (?)", [(p,) for p in points])
        gids = dict(conn.execute("SELECT gateway, id FROM gateway").fetchall())
        pids = dict(conn.execute("SELECT code, id FROM point").fetchall())
        groups = grouped_rows(batches, gids, pids)
        sql = f"INSERT INTO reading {_COLUMNS} VALUES (?, ?, ?, ?, ?, ?)"
        began = time.perf_counter()
        for rows in groups:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        took = time.perf_counter() - began
        count = conn.execute("SELECT count(*) FROM reading").fetchone()[0]
    finally:
        conn.close()
    if count != sum(map(len, groups)):
        raise RuntimeError(f"sqlite ceiling: {count} rows")
    return took


def pg_ceiling(url: str, batches: Sequence[tuple[str, tuple[Any, ...]]]) -> float:
    """Seconds to COPY the rows into a fresh collector database (see the docstring)."""
    open_storage(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        gateways = sorted({gw for gw, _ in batches})
        points = sorted({r.point for _, readings in batches for r in readings})
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO gateway (unit, gateway) VALUES (%s, %s)",
                            [(UNIT, g) for g in gateways])
            cur.executemany("INSERT INTO point (code) VALUES (%s)", [(p,) for p in points])
        gids: dict[str, int] = dict(conn.execute("SELECT gateway, id FROM gateway").fetchall())
        pids: dict[str, int] = dict(conn.execute("SELECT code, id FROM point").fetchall())
        groups = grouped_rows(batches, gids, pids)
        buffers = [_COPY_HEADER + b"".join(_COPY_ROW.pack(6, 8, ts, 8, value, 4, gid, 4, pid,
                                                          2, period, 2, quality)
                                           for ts, value, gid, pid, period, quality in rows)
                   + _COPY_TRAILER for rows in groups]
        sql = f"COPY reading {_COLUMNS} FROM STDIN (FORMAT BINARY)"
        began = time.perf_counter()
        for buffer in buffers:
            with conn.transaction(), conn.cursor() as cur, cur.copy(sql) as copy:
                copy.write(buffer)
        took = time.perf_counter() - began
        row = conn.execute("SELECT count(*) FROM reading").fetchone()
    if row is None or row[0] != sum(map(len, groups)):
        raise RuntimeError(f"postgresql ceiling: {row} rows")
    return took


# ------------------------------------------------------------- the stages alone, in-process

@dataclass(frozen=True, slots=True)
class StageTimes:
    backend: str
    verify_s: float
    store_s: float


def stages_alone(bench: Bench, database: str, backend: str,
                 profile: cProfile.Profile | None = None) -> StageTimes:
    """The ingest's two stages (``Stages.verify``, ``Stages.store``) run one after the other in
    this process over the stream, GROUP messages at a time: their CPU and database time without
    the broker, the threads or the event loop."""
    from cryptography import x509

    writer, reader = open_storage(database), open_storage(database)
    thresholds = gc.get_threshold()
    gc.set_threshold(*_INGEST_GC)          # the collector process's (tune_gc_for_ingest)
    try:
        lookups = GroupLookups(reader)
        ca = x509.load_pem_x509_certificate(bench.collector.ca_path.read_bytes())
        stages = Stages(writer, Verifier([ca], lookups), lookups)
        link: Any = None
        births = [Incoming(s.status_topic, s.birth(), 0, 1, link) for s in bench.streams]
        stages.store(stages.verify(births, 0))
        messages = [Incoming(s.data_topic, payload, 0, 1, link)
                    for s, payload in interleaved(bench.streams)]
        verify_s = store_s = 0.0
        if profile is not None:
            profile.enable()
        for token, at in enumerate(range(0, len(messages), GROUP), 1):
            began = time.perf_counter()
            prepared = stages.verify(messages[at:at + GROUP], token)
            verified = time.perf_counter()
            stages.store(prepared)
            lookups.commit(token)
            store_s += time.perf_counter() - verified
            verify_s += verified - began
        if profile is not None:
            profile.disable()
        if sum(1 for _ in writer.readings()) != bench.readings:
            raise RuntimeError("stages alone: not every reading stored")
    finally:
        gc.set_threshold(*thresholds)
        writer.close()
        reader.close()
    return StageTimes(backend, verify_s, store_s)


# ---------------------------------------------------------------------------- the report

def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def versions(cluster: PostgresCluster) -> str:
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        pg = str(conn.execute("SHOW server_version").fetchone()[0])   # type: ignore[index]
    return f"PostgreSQL {pg} | SQLite {sqlite3.sqlite_version} | psycopg {psycopg.__version__}"


@dataclass
class Results:
    kemon: dict[tuple[str, int], list[KemonRun]]
    broker_s: list[float]
    storage_s: dict[str, list[float]]
    stages: dict[str, list[StageTimes]]

    def kemon_s(self, backend: str, processes: int) -> float:
        return median([r.seconds for r in self.kemon[backend, processes]])


def report(bench: Bench, res: Results) -> None:
    n = bench.readings
    broker_rate = n / median(res.broker_s)
    print(f"\n{n:,} readings: {len(bench.streams)} gateways x "
          f"{len(bench.streams[0].batches)} batches of {PER_BATCH} = {bench.messages:,} "
          f"messages, {sum(len(p) for _, p in interleaved(bench.streams)) / bench.messages:,.0f}"
          f" bytes each; medians of {len(res.broker_s)} rounds\n")
    print("| path | back end | processes | readings/s | messages/s | seconds | of lower ceiling "
          "| peak RSS MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    ratios: dict[str, float] = {}
    for backend in ("sqlite", "postgresql"):
        lower = min(broker_rate, n / median(res.storage_s[backend]))
        for processes in (1, 2):
            runs = res.kemon.get((backend, processes))
            if not runs:
                continue
            seconds = res.kemon_s(backend, processes)
            rss = max(max(r.maxrss_kib) for r in runs) / 1024
            rate = n / seconds
            if processes == 1:
                ratios[backend] = rate / lower
            print(f"| Kemon `collector run` (verify + store + PUBACK) | {backend} | {processes} "
                  f"| {rate:,.0f} | {bench.messages / seconds:,.0f} | {seconds:.2f} | "
                  f"{rate / lower:.2f} | {rss:.0f} |")
    sub_s = median(res.broker_s)
    print(f"| ceiling 1: `mosquitto_sub` QoS 1 to /dev/null | - | 1 | {broker_rate:,.0f} | "
          f"{bench.messages / sub_s:,.0f} | {sub_s:.2f} | - | - |")
    for backend, what in (("sqlite", "`executemany` INSERT"), ("postgresql", "binary COPY")):
        seconds = median(res.storage_s[backend])
        print(f"| ceiling 2: bare {what}, {GROUP} messages a transaction | {backend} | 1 | "
              f"{n / seconds:,.0f} | {bench.messages / seconds:,.0f} | {seconds:.2f} | - | - |")
    if res.stages:
        print("\nThe two stages alone, one after the other in one process (no broker, no "
              "threads): CPU + database time")
        print("| back end | verify s | store s | verify µs a reading | store µs a reading | "
              "readings/s if serial |")
        print("|---|---:|---:|---:|---:|---:|")
        for backend, times in res.stages.items():
            v = median([t.verify_s for t in times])
            s = median([t.store_s for t in times])
            print(f"| {backend} | {v:.2f} | {s:.2f} | {v * 1e6 / n:.2f} | {s * 1e6 / n:.2f} | "
                  f"{n / (v + s):,.0f} |")
    print()
    for backend in ("sqlite", "postgresql"):
        if (backend, 1) not in res.kemon:
            continue
        rate = n / res.kemon_s(backend, 1)
        print(f"Goal, {backend}: ≥ {GOAL_READINGS_S:,} readings/s: "
              f"{verdict(rate >= GOAL_READINGS_S)} ({rate:,.0f}); ≥ {GOAL_RATIO} of the lower "
              f"ceiling: {verdict(ratios[backend] >= GOAL_RATIO)} ({ratios[backend]:.2f})")
        if (backend, 2) in res.kemon:
            scale = res.kemon_s(backend, 1) / res.kemon_s(backend, 2)
            print(f"Goal, {backend}: two processes ≥ {GOAL_SCALING}x one: "
                  f"{verdict(scale >= GOAL_SCALING)} ({scale:.2f}x)")
    for key, runs in sorted(res.kemon.items()):
        groups = median([r.groups for r in runs])
        print(f"  {key[0]}, {key[1]} process(es): {groups:.0f} groups (transactions), "
              f"{n / max(groups, 1):,.0f} readings a group on average")


def cpu_line(cpu_s: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu_s.items())


def cpu_report(bench: Bench, res: Results) -> None:
    """Where the CPU went during the Kemon runs (medians): the collector process(es), the
    broker, the PostgreSQL server; and how many of the machine's cores that is."""
    print(f"\nCPU during the Kemon runs (seconds, medians; the machine has {os.cpu_count()} "
          "cores)")
    print("| back end | processes | wall s | collector CPU s | broker CPU s | database CPU s "
          "| cores busy |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (backend, processes), runs in sorted(res.kemon.items()):
        wall = median([r.seconds for r in runs])
        parts = {name: median([r.cpu_s.get(name, 0.0) for r in runs])
                 for name in ("collector", "broker", "database")}
        busy = sum(parts.values()) / wall
        database = f"{parts['database']:.2f}" if backend == "postgresql" else "(in-process)"
        print(f"| {backend} | {processes} | {wall:.2f} | {parts['collector']:.2f} | "
              f"{parts['broker']:.2f} | {database} | {busy:.2f} |")


def print_profile(profile: cProfile.Profile, title: str, lines: int = 35) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(lines)
        text = out.getvalue()
        print(f"\n--- cProfile, {title}, by {order} ---\n{text[text.find('   ncalls'):].rstrip()}")


@contextlib.contextmanager
def postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()



def rounds(args: argparse.Namespace, bench: Bench, res: Results, backends: Sequence[str],
           database: Callable[[str], str], rows: Any, pg: Any, work: Path) -> None:
    """The timed rounds (printing each figure as it comes)."""
    for r in range(args.rounds):
        seconds = bench.broker_ceiling()
        res.broker_s.append(seconds)
        print(f"round {r + 1}: mosquitto_sub {seconds:.2f} s", flush=True)
        for backend in backends:
            for processes in (1,) if args.no_two else (1, 2):
                run = bench.kemon(backend, database(backend), processes)
                res.kemon.setdefault((backend, processes), []).append(run)
                print(f"round {r + 1}: Kemon {backend} x{processes}: "
                      f"{run.seconds:.2f} s, {run.rate:,.0f} readings/s, "
                      f"{run.groups} groups, peak RSS "
                      f"{max(run.maxrss_kib) / 1024:.0f} MiB, messages per process "
                      f"{run.split}, first message/PUBACK after "
                      f"{run.phases[0]:.2f}/{run.phases[1]:.2f} s, CPU s "
                      f"{cpu_line(run.cpu_s)}; load "
                      f"{os.getloadavg()[0]:.2f}; open files "
                      f"{len(os.listdir('/proc/self/fd'))}", flush=True)
            if backend == "sqlite":
                seconds = sqlite_ceiling(work / f"ceiling-{r}.db", rows)
            else:
                seconds = pg_ceiling(pg.create_database(f"ceiling_{r}"), rows)
            res.storage_s[backend].append(seconds)
            print(f"round {r + 1}: bare insert {backend}: {seconds:.2f} s", flush=True)
            if not args.no_stages:
                times = stages_alone(bench, database(backend), backend)
                res.stages.setdefault(backend, []).append(times)
                print(f"round {r + 1}: stages alone {backend}: verify "
                      f"{times.verify_s:.2f} s, store {times.store_s:.2f} s",
                      flush=True)

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=READINGS,
                        help="readings in the stream (default 1,000,000)")
    parser.add_argument("--gateways", type=int, default=GATEWAYS, help="default 50")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each path; medians")
    parser.add_argument("--backends", default="sqlite,postgresql",
                        help="comma-separated: sqlite, postgresql")
    parser.add_argument("--no-two", action="store_true", help="skip the two-process runs")
    parser.add_argument("--no-stages", action="store_true",
                        help="skip timing the two stages alone in-process")
    parser.add_argument("--profile", action="store_true",
                        help="add a cProfile pass of the two stages (in-process) per back end")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    per_gateway = max(1, -(-args.readings // (args.gateways * PER_BATCH)))

    print(f"Machine: {machine()}")
    print(f"Date: {dt.date.today().isoformat()} | load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at the start")
    with tempfile.TemporaryDirectory(prefix="kemon-bench-ingest-") as tmp, postgres() as pg:
        work = Path(tmp)
        print(versions(pg))
        pki = make_pki(work / "pki")
        began = time.perf_counter()
        streams = make_stream(pki, args.gateways, per_gateway)
        total = args.gateways * per_gateway
        print(f"Stream: {args.gateways} gateways x {per_gateway} batches of {PER_BATCH} "
              f"readings = {total * PER_BATCH:,} readings, sealed in "
              f"{time.perf_counter() - began:.1f} s (not timed)", flush=True)
        rows = decoded(streams)
        with Broker(pki, work / "broker", collectors=("bench",),
                    max_inflight_messages=BROKER_INFLIGHT,
                    max_queued_messages=max(100_000, 2 * total)) as broker:
            bench = Bench(work, broker, pki.collector("bench"), streams,
                          postmaster=int((pg.data / "postmaster.pid").read_text().split()[0]))
            publish_births(broker, streams)
            res = Results({}, [], {b: [] for b in backends}, {})
            databases = iter(range(1, 10_000))

            def database(backend: str) -> str:
                k = next(databases)
                if backend == "sqlite":
                    return f"sqlite:///{work / f'collector-{k}.db'}"
                return pg.create_database(f"bench_{k}")

            try:
                rounds(args, bench, res, backends, database, rows, pg, work)
            except Exception:
                print("broker log, last lines:\n" + "\n".join(
                    broker.log_text().splitlines()[-25:]), file=sys.stderr)
                raise
            report(bench, res)
            cpu_report(bench, res)
            if args.profile:
                for backend in backends:
                    profile = cProfile.Profile()
                    stages_alone(bench, database(backend), backend, profile)
                    print_profile(profile, f"Stages.verify + Stages.store, {backend}")
        print(f"\nLoad average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
