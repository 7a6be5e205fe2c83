"""Fleet benchmark: 2,000 simulated gateways, each on its own mutual-TLS MQTT 5 connection with
its own certificate, publish real sealed batches through Mosquitto to ``kemon collector run``
(PostgreSQL by default) for several minutes, with a quarter-hour burst.

Run: ``.venv/bin/python bench/bench_fleet.py`` (about 7 minutes: 5 minutes of traffic plus
set-up and checks); ``--smoke`` for a one-minute run with 200 gateways; ``--gateways N
--minutes M --quarter S --spread S --collectors C --database pg|sqlite`` to vary it;
``--json FILE`` writes every figure.

The fleet (``bench._fleet_plan``): gateway ``i`` has its own unit (a valid unified social
credit code), id ``GW<i>`` and ECDSA P-256 certificate, made once and cached under
``<tmp>/kemon-bench-fleet``. Time is compressed: a *quarter* (default 30 s) stands for the
field's 15 minutes; in each quarter every gateway publishes one batch of 200 readings (seq 1,
2, … on its hash chain), all within the first ``--spread`` seconds (default 2): the burst when
every gateway of a province sends its quarter-hour values together. 2,000 gateways every 30 s
is 30 times the field's message rate of 2,000 units; the burst itself (2,000 batches, 400,000
readings within 2 s) is what 2,000 units send at :00, :15, :30 and :45.

Processes: Mosquitto (``tests/brokers.py``: mutual TLS, CN as user name, the Kemon ACL,
persistence; plus a ``monitor`` user allowed to read ``$SYS``, ``sys_interval 5`` and
``max_inflight_messages 1000``), a private PostgreSQL (``tests/pg.py``), ``--collectors``
``kemon collector run`` processes in one share group, and publisher processes
(``bench/_fleet_publisher.py``: ``--per-publisher`` gateways each on one asyncio loop, a
minimal MQTT 5 client in ``bench/_mqtt_lite.py``). RLIMIT_NOFILE is raised here, so the
broker and every child inherit it.

Measured: connections held (at the broker: its ESTABLISHED sockets on the port, and
``$SYS/broker/clients/connected``; at the publishers: open connections, reconnects), batches
published, acknowledged and stored (the database checked at the end: every gateway holds seqs
1..K exactly once, readings = batches x 200, nothing quarantined), the collectors' counters
(duplicates, resend requests), RSS and CPU of every process every ``--sample`` seconds,
latency from PUBLISH to the batch visible in the database (a poller reads new batch rows every
0.25 s, so that figure is rounded up to 0.25 s) and to the collector's ``received`` stamp
(taken when it verifies the batch), and each burst's drain time: from the quarter's start to
its last batch stored.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import platform
import queue
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench._fleet_plan import POINTS, FleetPki  # noqa: E402
from bench._fleet_watch import (  # noqa: E402
    POLL,
    Db,
    FleetBroker,
    Groups,
    StoredWatch,
    SysWatch,
    broker_connections,
    cpu_s,
    rss_mb,
    sample,
    tree,
)
from provisioning import load_cert  # noqa: E402
from tests.brokers import MOSQUITTO, Broker, Pki  # noqa: E402
from tests.pg import PostgresCluster  # noqa: E402

log = logging.getLogger("bench_fleet")

COLLECTOR_NAME = "fleet"          # CN collector-fleet: the ACL lets it read every up/#
NOFILE = 65_536                   # descriptors wanted for the broker and publishers
BROKER_INFLIGHT = 1000            # Mosquitto max_inflight_messages (see docs/national-sizing.md)
KEMON = ROOT / ".venv" / "bin" / "kemon"


# ----------------------------------------------------------------------------- the machine

def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, check=False).stdout
    broker = out.splitlines()[0].strip() if out else "mosquitto"
    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.platform()} | {cpu} x{os.cpu_count()} | {mem:.0f} GiB | Python "
            f"{platform.python_version()} | {broker}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE (soft and, as root, hard) to NOFILE; the soft limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    for limits in ((want, max(hard, want)), (hard, hard)):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------------- processes

@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    lines: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    last: dict[str, Any] = field(default_factory=dict)

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_collector(n: int, work: Path, pki: FleetPki, broker: Broker, database: str,
                    queue_size: int) -> Child:
    cfg = work / f"collector{n}.toml"
    cfg.write_text(
        "[collector]\n"
        'role = "province"\nregion = "320000"\n'
        f'database = "{database}"\nqueue = {queue_size}\n\n'
        "[broker]\n"
        f'url = "{broker.url}"\nca_file = "{pki.ca_path}"\n'
        f'cert_file = "{pki.collector_cert_path}"\nkey_file = "{pki.collector_key_path}"\n'
        f'share_group = "fleet"\nclient_id = "fleet-collector-{n}"\n', encoding="utf-8")
    log_path = work / f"collector{n}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([str(KEMON), "collector", "run", "-c", str(cfg)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return Child(f"collector{n}", proc, log_path)


def wait_log(child: Child, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while needle not in child.log.read_text(errors="replace"):
        if child.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} did not log {needle!r}:\n"
                               f"{child.log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def start_publisher(n: int, work: Path, args: dict[str, Any]) -> Child:
    log_path = work / f"publisher{n}.log"
    with log_path.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_fleet_publisher.py"),
                                 json.dumps(args)], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err)
    child = Child(f"publisher{n}", proc, log_path)

    def read() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with contextlib.suppress(ValueError):
                doc = json.loads(raw)
                child.last = doc
                child.lines.put(doc)
        child.lines.put({"event": "exit"})

    threading.Thread(target=read, name=f"{child.name}-stdout", daemon=True).start()
    return child


def tell(child: Child, line: str) -> None:
    assert child.proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        child.proc.stdin.write(line.encode() + b"\n")
        child.proc.stdin.flush()


def expect(child: Child, event: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            doc = child.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{child.name}: no {event!r} within {timeout} s: "
                               f"{child.log.read_text(errors='replace')[-3000:]}") from None
        if doc.get("event") == event:
            return doc
        if doc.get("event") == "exit":
            raise RuntimeError(f"{child.name} exited before {event!r}: "
                               f"{child.log.read_text(errors='replace')[-3000:]}")


# ----------------------------------------------------------------------------- the run

def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def parse_counters(text: str) -> dict[str, int]:
    """The last ``stopped: messages=… acked=…`` (or periodic) counters line of a collector."""
    lines = [ln for ln in text.splitlines() if "messages=" in ln and "acked=" in ln]
    if not lines:
        return {}
    line = lines[-1]
    out = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    q = re.search(r"quarantined\[([^\]]*)\]", line)
    out["quarantined"] = sum(int(n) for n in re.findall(r"=(\d+)", q.group(1))) if q else 0
    return out


def run(opts: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"machine": machine(), "uptime_before": uptime(),
                              "options": vars(opts).copy()}
    nofile = raise_nofile()
    result["nofile"] = nofile
    if nofile < opts.gateways + 200:
        raise SystemExit(f"RLIMIT_NOFILE is {nofile}: too few for {opts.gateways} connections")
    t = time.monotonic()
    cache = Path(tempfile.gettempdir()) / "kemon-bench-fleet"
    pki = FleetPki.load_or_make(cache, opts.gateways, COLLECTOR_NAME)
    result["pki_s"] = round(time.monotonic() - t, 2)
    quarters = max(1, int(opts.minutes * 60 // opts.quarter))
    per_pub = opts.per_publisher
    n_pub = math.ceil(opts.gateways / per_pub)
    print(f"{opts.gateways} gateways in {n_pub} publisher processes, {quarters} quarters of "
          f"{opts.quarter:g} s (burst spread {opts.spread:g} s), {opts.collectors} collector(s) "
          f"on {opts.database}; certificates ready in {result['pki_s']} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="kemon-fleet-"))
    stack = contextlib.ExitStack()
    children: list[Child] = []
    try:
        test_pki = Pki(dir=work / "pki", ca_key=pki.ca_key, ca_cert=load_cert(pki.ca_path),
                       ca_path=pki.ca_path, server_cert_path=pki.server_cert_path,
                       server_key_path=pki.server_key_path, crl_path=pki.crl_path,
                       hosts=("127.0.0.1", "localhost"))
        (work / "pki").mkdir()
        cluster: PostgresCluster | None = None
        if opts.database == "pg":
            cluster = PostgresCluster.start()
            stack.callback(cluster.stop)
            database = cluster.create_database("fleet")
        else:
            database = f"sqlite:///{work / 'collector.db'}"
        broker = FleetBroker(test_pki, work / "broker", collectors=(COLLECTOR_NAME,),
                             autosave_interval=60, max_inflight_messages=BROKER_INFLIGHT)
        broker.start()
        stack.callback(broker.stop)
        assert broker.proc is not None
        sys_watch = SysWatch(broker, test_pki)
        stack.callback(sys_watch.close)

        collectors = [start_collector(n, work, pki, broker, database, opts.queue)
                      for n in range(1, opts.collectors + 1)]
        children += collectors
        for c in collectors:
            wait_log(c, ": connected to ", 60)
        watch = StoredWatch(database)
        watch.start()
        stack.callback(watch.stop.set)

        # --- connect the fleet ---------------------------------------------------------
        ramp_start = time.monotonic()
        broker_cpu0 = cpu_s(tree(broker.proc.pid))
        publishers = []
        for n in range(n_pub):
            first, stop = n * per_pub, min(opts.gateways, (n + 1) * per_pub)
            args = {"host": broker.host, "port": broker.port, "ca": str(pki.ca_path),
                    "pki_dir": str(pki.dir), "first": first, "stop": stop,
                    "quarter": opts.quarter, "spread": opts.spread, "quarters": quarters,
                    "points": POINTS, "keepalive": opts.keepalive, "seed": 1,
                    "seal_at": 0.5, "connect_concurrency": opts.connect_concurrency,
                    "connect_timeout": 60.0, "ack_timeout": 120.0, "status_every": 5.0,
                    "sends_path": str(work / f"sends{n}.txt")}
            publishers.append(start_publisher(n, work, args))
        children += publishers
        ready = [expect(p, "ready", 600) for p in publishers]
        ramp_s = time.monotonic() - ramp_start
        result["ramp"] = {
            "seconds": round(ramp_s, 1), "connections_per_s": round(opts.gateways / ramp_s, 1),
            "broker_cpu_s": round(cpu_s(tree(broker.proc.pid)) - broker_cpu0, 2),
            "connect_failures": sum(r["connect_failures"] for r in ready),
            "publisher_connect_s": [r["connect_s"] for r in ready],
            "broker_conns": broker_connections(broker.proc.pid, broker.port),
            "publisher_rss_mb": round(rss_mb([p for c in publishers
                                              for p in tree(c.proc.pid)]), 1),
            "broker_rss_mb": round(rss_mb(tree(broker.proc.pid)), 1)}
        print(f"fleet connected: {opts.gateways} connections + births in {ramp_s:.1f} s "
              f"({result['ramp']['connections_per_s']}/s), broker holds "
              f"{result['ramp']['broker_conns']}", flush=True)
        births_deadline = time.monotonic() + 120
        while True:       # every birth stored (its certificate pinned) before the first batch
            with contextlib.suppress(Exception):
                db = Db(database)
                n = db.rows("SELECT count(*) FROM certificate_pin")[0][0]
                db.close()
                if n >= opts.gateways:
                    break
            if time.monotonic() > births_deadline:
                raise RuntimeError("births not all stored within 120 s")
            time.sleep(0.5)

        # --- the traffic ---------------------------------------------------------------
        groups = Groups(broker=broker.proc.pid,
                        postgres=_postmaster(cluster) if cluster else None,
                        collectors=[c.proc.pid for c in collectors],
                        publishers=[p.proc.pid for p in publishers])
        t0 = time.time() + 3.0
        for p in publishers:
            tell(p, f"start {t0!r}")
        samples = [sample(groups, broker.port, sys_watch, t0, len(watch.seen))]
        end = t0 + quarters * opts.quarter
        next_sample = time.time() + opts.sample
        done: dict[str, dict[str, Any]] = {}
        while len(done) < len(publishers):
            for p in publishers:
                with contextlib.suppress(queue.Empty):
                    while True:
                        doc = p.lines.get_nowait()
                        if doc.get("event") == "done":
                            done[p.name] = doc
                        elif doc.get("event") == "exit" and p.name not in done:
                            raise RuntimeError(f"{p.name} exited: "
                                               f"{p.log.read_text(errors='replace')[-3000:]}")
            if time.time() >= next_sample:
                samples.append(sample(groups, broker.port, sys_watch, t0, len(watch.seen)))
                s = samples[-1]
                print(f"  t={s['t']:6.1f}s conns={s['broker_conns']} stored={s['stored_batches']}"
                      f" collector_rss={s['collector_rss_mb_each']} MB broker_rss="
                      f"{s['broker_rss_mb']} MB", flush=True)
                next_sample += opts.sample
            if time.time() > end + 300:
                raise RuntimeError("publishers not done 300 s after the last quarter")
            time.sleep(0.1)
        published = sum(d["published"] for d in done.values())
        drain_deadline = time.time() + 120
        while len(watch.seen) < published and time.time() < drain_deadline:
            time.sleep(0.2)
        time.sleep(2 * POLL)
        samples.append(sample(groups, broker.port, sys_watch, t0, len(watch.seen)))
        for p in publishers:
            tell(p, "close")
        for p in publishers:
            p.proc.wait(60)
        counters = []
        for c in collectors:
            rc = c.stop()
            counters.append({"exit": rc, **parse_counters(c.log.read_text(errors="replace"))})
        watch.stop.set()
        watch.join(10)
        result["uptime_after"] = uptime()

        # --- the checks ----------------------------------------------------------------
        db = Db(database)
        per_gw = db.rows("SELECT g.unit, g.gateway, count(*), min(b.seq), max(b.seq), "
                         "sum(b.count) FROM batch b JOIN gateway g ON g.id = b.gateway_id "
                         "GROUP BY g.unit, g.gateway")
        readings_rows = db.rows("SELECT count(*) FROM reading")[0][0]
        quarantined = db.rows("SELECT count(*) FROM quarantine")[0][0]
        chains = dict(db.rows("SELECT chain, count(*) FROM batch GROUP BY chain"))
        if db.pg:       # bytes on disk, tables with their indexes and TOAST
            sizes = {t: db.rows("SELECT pg_total_relation_size(%s)", t)[0][0]
                     for t in ("reading", "batch")}
            sizes["database"] = db.rows("SELECT pg_database_size(current_database())")[0][0]
        else:
            sizes = {"database": Path(database.removeprefix("sqlite:///")).stat().st_size}
        result["disk_bytes"] = sizes
        db.close()
        stored_batches = sum(r[2] for r in per_gw)
        complete = sum(1 for r in per_gw if r[2] == quarters and r[3] == 1 and r[4] == quarters)
        sends = _read_sends(work, n_pub)
        result["traffic"] = {
            "quarters": quarters, "published": published,
            "acked": sum(d["acked"] for d in done.values()),
            "stored_batches": stored_batches, "expected_batches": opts.gateways * quarters,
            "gateways_complete": complete, "gateways": opts.gateways,
            "readings_stored": readings_rows, "expected_readings":
                opts.gateways * quarters * POINTS,
            "quarantined": quarantined, "chains": chains,
            "failed_acks": sum(d["failed_acks"] for d in done.values()),
            "reconnects": sum(d["reconnects"] for d in done.values()),
            "republished": sum(d["republished"] for d in done.values()),
            "late_seals": sum(d["late_seals"] for d in done.values()),
            "publish_lag_p99_ms": max(d["lag_p99_ms"] or 0 for d in done.values()),
            "publish_lag_max_ms": max(d["lag_max_ms"] or 0 for d in done.values()),
            "publisher_cpu_s": round(sum(d["cpu_s"] for d in done.values()), 1),
            "publisher_seal_s": round(sum(d["seal_s"] for d in done.values()), 1),
            "collectors": counters}
        result["latency"] = _latency(sends, watch.seen)
        result["bursts"] = _bursts(watch.seen, t0, opts.quarter, quarters)
        result["samples"] = samples
        result["summary"] = _summary(samples, opts, ramp_s)
        return result
    finally:
        for child in children:
            child.stop(10)
        stack.close()
        if opts.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _postmaster(cluster: PostgresCluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def _read_sends(work: Path, n_pub: int) -> dict[tuple[str, str, int], tuple[int, int]]:
    out: dict[tuple[str, str, int], tuple[int, int]] = {}
    for n in range(n_pub):
        path = work / f"sends{n}.txt"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            unit, gw, seq, sent, acked = line.split()
            out[(unit, gw, int(seq))] = (int(sent), int(acked))
    return out


def _latency(sends: dict[tuple[str, str, int], tuple[int, int]],
             seen: dict[tuple[str, str, int], tuple[int, int]]) -> dict[str, Any]:
    to_seen, to_received, to_ack = [], [], []
    for key, (sent, acked) in sends.items():
        if key in seen:
            seen_ms, received = seen[key]
            to_seen.append(seen_ms - sent)
            to_received.append(received - sent)
        if acked >= 0:
            to_ack.append(acked - sent)

    def stats(v: list[int]) -> dict[str, float]:
        if not v:
            return {}
        return {"n": len(v), "p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "max_ms": max(v)}

    return {"publish_to_stored": stats(to_seen), "publish_to_received": stats(to_received),
            "publish_to_puback": stats(to_ack)}


def _bursts(seen: dict[tuple[str, str, int], tuple[int, int]], t0: float, quarter: float,
            quarters: int) -> list[dict[str, Any]]:
    """Per quarter: seconds from its start to its last batch visible in the database (and to
    its last ``received`` stamp)."""
    by_seq: dict[int, list[tuple[int, int]]] = {}
    for (_u, _g, seq), times in seen.items():
        by_seq.setdefault(seq, []).append(times)
    out: list[dict[str, Any]] = []
    for k in range(quarters):
        start_ms = (t0 + k * quarter) * 1000
        quarter_times = by_seq.get(k + 1, [])
        if not quarter_times:
            out.append({"quarter": k, "stored": 0})
            continue
        last_seen = max(s for s, _ in quarter_times)
        last_received = max(r for _, r in quarter_times)
        out.append({"quarter": k, "stored": len(quarter_times),
                    "drain_s": round((last_seen - start_ms) / 1000, 2),
                    "last_received_s": round((last_received - start_ms) / 1000, 2)})
    return out


def _summary(samples: list[dict[str, Any]], opts: argparse.Namespace,
             ramp_s: float) -> dict[str, Any]:
    """Flatness and CPU: first vs last minute of the traffic, CPU share per component."""
    first = [s for s in samples if s["t"] <= 60]
    last = [s for s in samples if s["t"] >= samples[-1]["t"] - 60]
    span = samples[-1]["t"] - samples[0]["t"]
    out: dict[str, Any] = {"ramp_s": round(ramp_s, 1), "traffic_s": round(span, 1)}
    comps = [k.removesuffix("_cpu_s") for k in samples[0] if k.endswith("_cpu_s")]
    for comp in comps:
        used = samples[-1][f"{comp}_cpu_s"] - samples[0][f"{comp}_cpu_s"]
        out[f"{comp}_cpu_pct"] = round(100 * used / span, 1) if span else None
        out[f"{comp}_rss_first_min_mb"] = round(statistics.mean(
            s[f"{comp}_rss_mb"] for s in first), 1)
        out[f"{comp}_rss_last_min_mb"] = round(statistics.mean(
            s[f"{comp}_rss_mb"] for s in last), 1)
        out[f"{comp}_rss_max_mb"] = max(s[f"{comp}_rss_mb"] for s in samples)
        out[f"{comp}_pss_first_min_mb"] = round(statistics.mean(
            s[f"{comp}_pss_mb"] for s in first), 1)
        out[f"{comp}_pss_last_min_mb"] = round(statistics.mean(
            s[f"{comp}_pss_mb"] for s in last), 1)
    conns = [s["broker_conns"] for s in samples]
    out["broker_conns_min"], out["broker_conns_max"] = min(conns), max(conns)
    sys_conn = [int(s["sys"]["clients/connected"]) for s in samples
                if s["t"] >= 0 and "clients/connected" in s.get("sys", {})]
    if sys_conn:
        out["sys_connected_min"], out["sys_connected_max"] = min(sys_conn), max(sys_conn)
    return out


# ----------------------------------------------------------------------------- the report

def report(r: dict[str, Any]) -> None:
    tr, lat, sm = r["traffic"], r["latency"], r["summary"]
    print()
    print(f"machine: {r['machine']}")
    print(f"uptime before: {r['uptime_before']}")
    print(f"uptime after:  {r['uptime_after']}")
    print(f"RLIMIT_NOFILE {r['nofile']}; certificates {r['pki_s']} s")
    ramp = r["ramp"]
    print(f"ramp: {tr['gateways']} TLS connections + births in {ramp['seconds']} s "
          f"({ramp['connections_per_s']}/s), broker CPU {ramp['broker_cpu_s']} s, "
          f"connect failures {ramp['connect_failures']}, publishers RSS "
          f"{ramp['publisher_rss_mb']} MB, broker RSS {ramp['broker_rss_mb']} MB")
    print(f"connections held at the broker: min {sm['broker_conns_min']} max "
          f"{sm['broker_conns_max']} (sockets); $SYS clients/connected min "
          f"{sm.get('sys_connected_min')} max {sm.get('sys_connected_max')} (incl. collectors "
          "and monitor); reconnects " f"{tr['reconnects']}")
    print(f"batches: published {tr['published']}, PUBACKed {tr['acked']}, stored "
          f"{tr['stored_batches']} of {tr['expected_batches']}; gateways with seq 1..K "
          f"exactly once: {tr['gateways_complete']}/{tr['gateways']}; readings "
          f"{tr['readings_stored']} of {tr['expected_readings']}")
    print(f"quarantined {tr['quarantined']}, chains {tr['chains']}, failed PUBACKs "
          f"{tr['failed_acks']}, republished {tr['republished']}, late seals "
          f"{tr['late_seals']}")
    for n, c in enumerate(tr["collectors"], 1):
        print(f"collector{n}: exit {c.get('exit')} messages {c.get('messages')} batches "
              f"{c.get('batches')} readings {c.get('readings')} duplicates "
              f"{c.get('duplicates')} quarantined {c.get('quarantined')} resend_requests "
              f"{c.get('resend_requests')} storage_failures {c.get('storage_failures')} "
              f"pauses {c.get('pauses')}")
    for name, st in lat.items():
        if st:
            print(f"latency {name}: p50 {st['p50_ms']} ms, p99 {st['p99_ms']} ms, max "
                  f"{st['max_ms']} ms (n={st['n']})")
    disk = r.get("disk_bytes", {})
    if disk:
        per = {k: f"{v / max(1, tr['readings_stored']):.1f}" for k, v in disk.items()}
        print(f"on disk: {', '.join(f'{k} {v / 2**20:.0f} MiB' for k, v in disk.items())}; "
              f"bytes per stored reading: {per}")
    drains = [b["drain_s"] for b in r["bursts"] if "drain_s" in b]
    if drains:
        print(f"burst drain (quarter start → last batch stored, ±{POLL} s): median "
              f"{statistics.median(drains):.2f} s, max {max(drains):.2f} s; per quarter "
              f"{drains}")
    print(f"publishers: CPU {tr['publisher_cpu_s']} s in all, connecting included (sealing "
          f"{tr['publisher_seal_s']} s), publication lag p99 {tr['publish_lag_p99_ms']} ms")
    comps = [k.removesuffix("_cpu_pct") for k in sm if k.endswith("_cpu_pct")]
    for comp in comps:
        print(f"{comp:>10}: CPU {sm[f'{comp}_cpu_pct']} % of one core over "
              f"{sm['traffic_s']} s; RSS first minute {sm[f'{comp}_rss_first_min_mb']} MB, "
              f"last minute {sm[f'{comp}_rss_last_min_mb']} MB, max {sm[f'{comp}_rss_max_mb']}"
              f" MB (PSS {sm[f'{comp}_pss_first_min_mb']} → {sm[f'{comp}_pss_last_min_mb']} MB)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--gateways", type=int, default=2000)
    p.add_argument("--minutes", type=float, default=5.0, help="minutes of traffic")
    p.add_argument("--quarter", type=float, default=30.0,
                   help="seconds standing for the field's 15 minutes")
    p.add_argument("--spread", type=float, default=2.0,
                   help="seconds over which the fleet publishes at a quarter's start")
    p.add_argument("--collectors", type=int, default=1)
    p.add_argument("--database", choices=("pg", "sqlite"), default="pg")
    p.add_argument("--queue", type=int, default=10_000, help="[collector] queue")
    p.add_argument("--per-publisher", type=int, default=500,
                   help="gateways per publisher process")
    p.add_argument("--connect-concurrency", type=int, default=25,
                   help="TLS handshakes in progress per publisher process")
    p.add_argument("--keepalive", type=int, default=60)
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--smoke", action="store_true",
                   help="200 gateways, 1 minute of 15-second quarters")
    p.add_argument("--json", type=Path, help="write every figure to this file")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    opts = p.parse_args(argv)
    if opts.smoke:
        opts.gateways, opts.minutes, opts.quarter, opts.sample = 200, 1.0, 15.0, 5.0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    r = run(opts)
    report(r)
    if opts.json:
        opts.json.write_text(json.dumps(r, indent=1, default=str))
    tr = r["traffic"]
    ok = (tr["stored_batches"] == tr["expected_batches"] == tr["published"]
          and tr["gateways_complete"] == tr["gateways"]
          and tr["readings_stored"] == tr["expected_readings"] and tr["quarantined"] == 0)
    print("every batch stored exactly once" if ok else "CHECK FAILED: see the figures above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
