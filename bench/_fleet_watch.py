"""What the fleet benchmark (bench/bench_fleet.py) watches: the broker (its own $SYS figures
and its sockets), the collector's database (each batch's first sight), and the CPU and memory of
every process of a component.

:class:`FleetBroker` is tests/brokers.py's Mosquitto with a ``monitor`` user allowed to read
``$SYS``; :class:`StoredWatch` polls the database every :data:`POLL` seconds for new batch rows;
:func:`sample` takes one snapshot of everything.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]

from tests.brokers import Broker, MqttClient, Pki, acl_text

__all__ = ["POLL", "Db", "FleetBroker", "Groups", "StoredWatch", "SysWatch", "broker_connections",
           "cpu_s", "pss_mb", "rss_mb", "sample", "tree"]

MONITOR_CN = "monitor"            # reads $SYS only
POLL = 0.25                       # seconds between looks at the database for new batches

# ----------------------------------------------------------------------------- the broker

class FleetBroker(Broker):
    """tests/brokers.py's Mosquitto with an ACL that also lets ``monitor`` read ``$SYS``,
    ``$SYS`` every 5 s and no cap on connections."""

    def config_text(self) -> str:
        fleet_acl = self.dir / "fleet.acl"
        fleet_acl.write_text(acl_text(self.collectors)
                             + f"\nuser {MONITOR_CN}\ntopic read $SYS/#\n", encoding="utf-8")
        text = super().config_text().replace(f"acl_file {self.acl_path}",
                                             f"acl_file {fleet_acl}")
        # general options (mosquitto.conf(5) 2.0): $SYS interval; -1 = no connection limit
        return text.replace("per_listener_settings false",
                            "per_listener_settings false\nsys_interval 5\nmax_connections -1")


class SysWatch:
    """The broker's $SYS figures, as last published (one paho client, user ``monitor``)."""

    TOPICS = ("$SYS/broker/clients/connected", "$SYS/broker/clients/maximum",
              "$SYS/broker/messages/received", "$SYS/broker/heap/current")

    def __init__(self, broker: Broker, pki: Pki) -> None:
        self.values: dict[str, str] = {}
        self.client = MqttClient.connect(broker, pki.client(MONITOR_CN))
        for t in self.TOPICS:
            self.client.subscribe(t, qos=0)

    def poll(self) -> dict[str, str]:
        with contextlib.suppress(queue.Empty):
            while True:
                m = self.client.messages.get_nowait()
                self.values[m.topic.rsplit("/", 2)[-2] + "/" + m.topic.rsplit("/", 1)[-1]] = \
                    m.payload.decode(errors="replace")
        return dict(self.values)

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- the database

class Db:
    """The collector's database, read by the benchmark (psycopg or sqlite3)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith("postgresql")
        if self.pg:
            import psycopg
            self.conn: Any = psycopg.connect(url, autocommit=True)
        else:
            path = url.removeprefix("sqlite:///")
            self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                        isolation_level=None)

    def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if not self.pg:
            sql = sql.replace("%s", "?")
        return list(self.conn.execute(sql, params).fetchall())

    def close(self) -> None:
        self.conn.close()


class StoredWatch(threading.Thread):
    """Every POLL seconds: the batch rows committed since the last look, with the time they
    were first seen: ``seen[(unit, gateway, seq)] = (seen_ms, received_ms)``."""

    def __init__(self, url: str) -> None:
        super().__init__(name="stored-watch", daemon=True)
        self.url = url
        self.seen: dict[tuple[str, str, int], tuple[int, int]] = {}
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        ids: set[int] = set()
        floor = 0                  # every id up to here has been seen
        db: Db | None = None
        while not self.stop.is_set():
            try:
                if db is None:
                    db = Db(self.url)
                rows = db.rows("SELECT b.id, g.unit, g.gateway, b.seq, b.received FROM batch b "
                               "JOIN gateway g ON g.id = b.gateway_id WHERE b.id > %s", floor)
            except Exception as exc:          # the table may not exist yet; keep looking
                self.error = f"{type(exc).__name__}: {exc}"
                if db is not None:
                    with contextlib.suppress(Exception):
                        db.close()
                db = None
                self.stop.wait(1.0)
                continue
            now = int(time.time() * 1000)
            for bid, unit, gw, seq, received in rows:
                if bid not in ids:
                    ids.add(bid)
                    self.seen.setdefault((unit, gw, int(seq)), (now, int(received)))
            while floor + 1 in ids:
                ids.discard(floor + 1)
                floor += 1
            self.stop.wait(POLL)
        if db is not None:
            db.close()


# ----------------------------------------------------------------------------- sampling

def tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.Error:
        return []


def cpu_s(procs: Sequence[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def rss_mb(procs: Sequence[psutil.Process]) -> float:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total / 2**20


def pss_mb(procs: Sequence[psutil.Process]) -> float:
    """Proportional set size: shared pages (PostgreSQL's shared buffers) counted once in all,
    where a sum of RSS counts them once per process that touched them."""
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_full_info().pss
    return total / 2**20


def broker_connections(pid: int, port: int) -> int:
    try:
        conns = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return -1
    return sum(1 for c in conns if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == port)


@dataclass
class Groups:
    """The processes of each component, re-read at every sample (PostgreSQL forks)."""

    broker: int
    postgres: int | None
    collectors: list[int]
    publishers: list[int]

    def procs(self) -> dict[str, list[psutil.Process]]:
        out = {"broker": tree(self.broker),
               "collectors": [p for pid in self.collectors for p in tree(pid)],
               "publishers": [p for pid in self.publishers for p in tree(pid)]}
        if self.postgres is not None:
            out["postgres"] = tree(self.postgres)
        return out


def sample(groups: Groups, port: int, sys_watch: SysWatch | None, t0: float,
           stored: int) -> dict[str, Any]:
    procs = groups.procs()
    s: dict[str, Any] = {"t": round(time.time() - t0, 1), "stored_batches": stored,
                         "broker_conns": broker_connections(groups.broker, port)}
    for name, ps in procs.items():
        s[f"{name}_cpu_s"] = round(cpu_s(ps), 2)
        s[f"{name}_rss_mb"] = round(rss_mb(ps), 1)
        s[f"{name}_pss_mb"] = round(pss_mb(ps), 1)
    s["collector_rss_mb_each"] = [round(rss_mb(tree(pid)), 1) for pid in groups.collectors]
    if sys_watch is not None:
        s["sys"] = sys_watch.poll()
    return s
