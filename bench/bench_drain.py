"""Uplink drain benchmark: how fast a backlog of 1,000,000 stored readings reaches a local
Mosquitto over mutual TLS, sealing included, side by side with a minimal paho loop (the ceiling).

Run: ``.venv/bin/python bench/bench_drain.py`` (about two minutes; ``--readings 100000
--rounds 1`` for a smoke run, ``--profile`` to add a cProfile pass of the Kemon path).

The backlog: a 50-point site (5 meters x 10 points: three voltages, three currents, active
power, power factor, two energy counters) polled every minute for 20,000 minutes (a two-week
outage), stored through ``Store.append_cycle`` one poll cycle (50 readings) a transaction, as
the gateway stores them. The meters differ as real ones do: two report float32 registers (a
value widened to a double), two DL/T 645 BCD with fixed decimals, one scaled integers. This
fill is not timed; it is made once and copied for every timed run, so each starts from the
same fresh, unsealed store.

Kemon path, timed end to end: ``Outbox.seal_pending()`` (5,000 signed batches of 200), then a
real ``Uplink`` (connect, TLS handshake, birth message, subscription, publishing with its
in-flight window) until ``outbox.acked_seq(dest) == outbox.last_seq()``, i.e. until the cursor
over every PUBACKed batch is stored.

Ceiling, same run, same broker, same identity: a minimal paho-mqtt 2.x client (MQTT 5, TLS,
``max_inflight_messages_set(window)``, ``loop_start()`` thread) publishing exactly the payloads
the outbox sealed, pre-built, at QoS 1 to the same topic, timed from ``connect`` until every
PUBACK has arrived. Both paths time the same span: connection set-up to the last PUBACK.

The broker is ``tests/brokers.py``'s Mosquitto (mutual TLS, the Kemon ACL, persistence) with
``max_inflight_messages 1000``: Mosquitto 2.0 announces that figure as its Receive Maximum in
CONNACK (default 100 in the test broker), and the uplink keeps its window below it.
Nobody subscribes to the data topic, so the broker discards the messages after the PUBACK.
Each path and window runs ``--rounds`` times (default 3); the median is reported.

Also printed: the field case, where the runner has sealed the backlog cycle by cycle while
the link was down (``Delivery.seal`` after every stored cycle), so the drain is the uplink
alone, with batches as small as one poll cycle; the paho loop with 2 kB payloads (the issue's
reference figure); and each stage of sealing timed alone (``--no-breakdown`` skips it), to show
where the sealing time goes without a profiler's distortion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import datetime as dt
import io
import logging
import os
import platform
import pstats
import random
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from paho.mqtt import __version__ as PAHO_VERSION
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway._model import DestinationConfig  # noqa: E402
from gateway._outbox import BATCH_SIZE, Outbox  # noqa: E402
from gateway._store import Store  # noqa: E402
from gateway._uplink import Uplink  # noqa: E402
from protocol import ZERO_HASH, Batch, Period, Quality, Reading, batch_hash, seal, topic  # noqa: E402
from protocol import _batch_codec as codec  # noqa: E402
from tests.brokers import MOSQUITTO, Broker, ClientFiles, make_pki, tls_context  # noqa: E402

log = logging.getLogger("bench_drain")

UNIT = "91320100MA1ABCDE0C"
GATEWAY = "GW0001"
DATA_TOPIC = topic(UNIT, GATEWAY, "up", "data")      # where the Uplink publishes batches
READINGS = 1_000_000
WINDOWS = (256, 64)
BROKER_INFLIGHT = 1000     # Mosquitto max_inflight_messages = the Receive Maximum it announces
GOAL_READINGS_S = 200_000  # issue 3: ≥ 200,000 readings/s …
GOAL_RATIO = 0.5           # … and ≥ 0.5 of the paho ceiling, sealing included
REF_PAYLOAD = 2000         # issue 3's ceiling figure: 2 kB QoS 1 messages
DRAIN_TIMEOUT = 300.0
F32 = struct.Struct(">f")

# The site: (name, typical value, wobble per poll, DL/T 645 decimals, Modbus integer scale).
# DL/T 645-2007 data formats (appendix A): voltage XXX.X, current XXX.XXX, power XX.XXXX,
# power factor X.XXX, energy XXXXXX.XX.
QUANTITIES = (
    ("ua", 230.4, 0.6, 1, 0.1), ("ub", 229.8, 0.6, 1, 0.1), ("uc", 231.1, 0.6, 1, 0.1),
    ("ia", 12.46, 0.3, 3, 0.01), ("ib", 11.93, 0.3, 3, 0.01), ("ic", 12.88, 0.3, 3, 0.01),
    ("p", 8.3127, 0.25, 4, 0.001), ("pf", 0.972, 0.004, 3, 0.001),
)
COUNTERS = (   # (name, value at the start, kWh or kvarh per minute, decimals, scale)
    ("ep", 157904.83, 0.139, 2, 0.001), ("eq", 45210.61, 0.021, 2, 0.001),
)
METER_KINDS = ("float32", "float32", "dlt645", "dlt645", "scaled")
POINTS_PER_POLL = len(METER_KINDS) * (len(QUANTITIES) + len(COUNTERS))     # 50


# ------------------------------------------------------------------------------- the machine

def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        out = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True, timeout=5,
                             check=False).stdout
        broker = out.splitlines()[0].strip() if out else "mosquitto (version unknown)"
    except (OSError, subprocess.SubprocessError):
        broker = "mosquitto (version unknown)"
    return (f"{platform.platform()} | {cpu} x{os.cpu_count()} | Python "
            f"{platform.python_version()} | {broker} | paho-mqtt {PAHO_VERSION}")


# ------------------------------------------------------------------------------ the backlog

def as_read(kind: str, value: float, decimals: int, scale: float) -> float:
    """``value`` as the gateway stores it after reading it from a meter of ``kind``."""
    if kind == "float32":
        single: float = F32.unpack(F32.pack(value))[0]
        return single
    if kind == "dlt645":
        pow10: int = 10**decimals
        return round(value * pow10) / pow10
    return round(value / scale) * scale


def poll_cycles(total: int, end_ms: int, seed: int = 3) -> Iterator[list[Reading]]:
    """``total`` readings, one list a minute of POINTS_PER_POLL, the last minute at ``end_ms``."""
    rng = random.Random(seed)
    minutes = -(-total // POINTS_PER_POLL)
    start = end_ms - (minutes - 1) * 60_000
    counts = {(m, c): v0 * (1 + 0.1 * m) for m in range(len(METER_KINDS))
              for c, (_n, v0, *_r) in enumerate(COUNTERS)}
    left = total
    for minute in range(minutes):
        ts = start + minute * 60_000
        cycle: list[Reading] = []
        for m, kind in enumerate(METER_KINDS):
            lost = rng.random() < 0.002                 # the meter did not answer this poll
            quality = Quality.COMM_ERROR if lost else Quality.GOOD
            for q, (_name, mean, wobble, dec, scale) in enumerate(QUANTITIES):
                value = 0.0 if lost else as_read(
                    kind, mean * (1 + 0.01 * m) + rng.uniform(-wobble, wobble), dec, scale)
                cycle.append(Reading(f"01010{m + 1:03d}01{q + 1:04d}01", Period.INSTANT, ts,
                                     value, quality))
            for c, (_name, _v0, rate, dec, scale) in enumerate(COUNTERS):
                counts[m, c] += rate * rng.uniform(0.5, 1.5)
                value = 0.0 if lost else as_read(kind, counts[m, c], dec, scale)
                cycle.append(Reading(f"01010{m + 1:03d}02{c + 1:04d}01", Period.INSTANT, ts,
                                     value, quality))
        cycle = cycle[:left]
        left -= len(cycle)
        yield cycle


def fill(path: Path, total: int, seal_key: Any = None) -> float:
    """Store ``total`` readings one poll cycle a transaction; returns the seconds it took.

    With ``seal_key``, also seal after every cycle, as the gateway's runner does while the
    link is down (``Delivery.seal`` after each stored cycle): the backlog is then batches of
    one cycle each, sealed before the link comes back."""
    end = int(time.time()) // 60 * 60_000
    began = time.perf_counter()
    with Store(path) as store:
        outbox = None if seal_key is None else Outbox(
            store, unit=UNIT, gateway=GATEWAY, key=seal_key, destinations=[])
        stored = 0
        for cycle in poll_cycles(total, end):
            stored += store.append_cycle(cycle)
            if outbox is not None:
                outbox.seal_pending()
    if stored != total:
        raise RuntimeError(f"stored {stored} readings of {total}")
    return time.perf_counter() - began


# ------------------------------------------------------------------------------- the paths

@dataclass(frozen=True, slots=True)
class KemonRun:
    window: int
    readings: int
    batches: int
    seal_s: float
    publish_s: float
    payload_bytes: int

    @property
    def total_s(self) -> float:
        return self.seal_s + self.publish_s


@dataclass(frozen=True, slots=True)
class PahoRun:
    window: int
    messages: int
    readings: int
    seconds: float


def destination(name: str, broker: Broker, files: ClientFiles, window: int) -> DestinationConfig:
    return DestinationConfig(name=name, url=broker.url, ca_file=files.ca_path,
                             cert_file=files.cert_path, key_file=files.key_path,
                             rate_limit=1e9, max_inflight=window, keepalive=30)


async def _drain(uplink: Uplink, outbox: Outbox, name: str) -> None:
    """Run ``uplink`` until the stored cursor covers every sealed batch, then stop it."""
    task = asyncio.create_task(uplink.run(), name=f"bench.uplink[{name}]")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    target = outbox.last_seq()
    try:
        while outbox.acked_seq(name) < target:
            if task.done():
                task.result()
                raise RuntimeError("the uplink stopped before the backlog was drained")
            if time.monotonic() > deadline:
                raise RuntimeError(f"not drained within {DRAIN_TIMEOUT:.0f} s: cursor at "
                                   f"{outbox.acked_seq(name)} of {target}, last error "
                                   f"{uplink.last_error}")
            await asyncio.sleep(0.005)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def kemon_drain(template: Path, work: Path, broker: Broker, files: ClientFiles,
                window: int, name: str, profile: cProfile.Profile | None = None,
                ) -> tuple[KemonRun, list[bytes]]:
    """Seal a copy of the backlog and drain it through an Uplink; returns the figures and the
    sealed payloads (for the ceiling)."""
    path = work / f"{name}.sqlite"
    shutil.copyfile(template, path)
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    dest = destination(name, broker, files, window)
    with Store(path) as store:
        readings = store.count()
        outbox = Outbox(store, unit=UNIT, gateway=GATEWAY, key=key,
                        destinations=[name])
        uplink = Uplink(dest, unit=UNIT, gateway=GATEWAY, outbox=outbox,
                        birth={"version": "bench", "certificate": "(bench)"},
                        client_id=f"{GATEWAY}@{UNIT}:{name}")
        if profile is not None:
            profile.enable()
        began = time.perf_counter()
        outbox.seal_pending()
        sealed = time.perf_counter()
        asyncio.run(_drain(uplink, outbox, name))
        ended = time.perf_counter()
        if profile is not None:
            profile.disable()
        batches = outbox.last_seq()
        payloads = [p for _, p in outbox.batches_after(0, batches)]
        if outbox.acked_seq(name) != batches or len(payloads) != batches:
            raise RuntimeError(f"cursor {outbox.acked_seq(name)}, last seq {batches}, "
                               f"{len(payloads)} batches stored")
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return KemonRun(window, readings, batches, sealed - began, ended - sealed,
                    sum(map(len, payloads))), payloads


def paho_drain(broker: Broker, files: ClientFiles, payloads: Sequence[bytes], window: int,
               client_id: str) -> float:
    """Publish ``payloads`` at QoS 1 with a bare paho client; seconds from connect to the last
    PUBACK."""
    everything = threading.Event()
    connected = threading.Event()
    refused: list[str] = []
    acked = 0

    def on_connect(_c: paho.Client, _u: Any, _f: paho.ConnectFlags, reason: ReasonCode,
                   _p: Any) -> None:
        if reason.is_failure:
            refused.append(f"CONNACK {reason}")
            everything.set()
        connected.set()

    def on_publish(_c: paho.Client, _u: Any, _mid: int, reason: ReasonCode, _p: Any) -> None:
        nonlocal acked
        if reason.is_failure:
            refused.append(f"PUBACK {reason}")
        acked += 1
        if acked == len(payloads):
            everything.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
    client.tls_set_context(tls_context(files.ca_path, files))
    client.max_inflight_messages_set(window)
    client.on_connect = on_connect
    client.on_publish = on_publish
    began = time.perf_counter()
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("paho: no CONNACK within 10 s")
        for payload in payloads:
            client.publish(DATA_TOPIC, payload, qos=1)
        if not everything.wait(DRAIN_TIMEOUT):
            raise RuntimeError(f"paho: {acked} PUBACKs of {len(payloads)} within "
                               f"{DRAIN_TIMEOUT:.0f} s")
        took = time.perf_counter() - began
    finally:
        client.disconnect()
        client.loop_stop()
    if refused:
        raise RuntimeError(f"paho: the broker refused: {refused[0]} ({len(refused)} in all)")
    return took


def seal_breakdown(template: Path, work: Path, files: ClientFiles) -> list[tuple[str, float]]:
    """Each stage of sealing timed alone (wall clock, no profiler) over the whole backlog."""
    path = work / "breakdown.sqlite"
    shutil.copyfile(template, path)
    key = serialization.load_pem_private_key(files.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    stages: list[tuple[str, float]] = []

    def timed(what: str, began: float) -> None:
        stages.append((what, time.perf_counter() - began))

    with Store(path) as store:
        began = time.perf_counter()
        store.read("SELECT id, point_id, period, ts, value, quality FROM reading ORDER BY id")
        timed("SQL: SELECT every reading as tuples (no Reading objects)", began)
        began = time.perf_counter()
        rows: list[tuple[int, Reading]] = []
        while chunk := store.after(rows[-1][0] if rows else 0, BATCH_SIZE * 50):
            rows.extend(chunk)
        timed("Store.after: the same rows as Reading objects (what seal_pending reads)", began)
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    readings = [r for _, r in rows]
    groups = [readings[i:i + BATCH_SIZE] for i in range(0, len(readings), BATCH_SIZE)]
    values = [r.value for r in readings]
    began = time.perf_counter()
    bodies = [codec.encode_body(g, None) for g in groups]
    timed("codec.encode_body: columnar msgpack + zlib, every batch", began)
    began = time.perf_counter()
    for value in values:
        codec._decimal(value)
    timed("  of which: codec._decimal (repr-based) on every value", began)
    raws = [zlib.decompress(b) for b in bodies]
    began = time.perf_counter()
    for raw in raws:
        zlib.compress(raw, codec.ZLIB_LEVEL)
    timed(f"  of which: zlib.compress level {codec.ZLIB_LEVEL} of the msgpack bodies", began)
    began = time.perf_counter()
    for raw in raws:
        key.sign(raw, ec.ECDSA(hashes.SHA256()))
    timed("ECDSA P-256 sign alone, every batch", began)
    ed = ed25519.Ed25519PrivateKey.generate()
    began = time.perf_counter()
    for raw in raws:
        ed.sign(raw)
    timed("  (Ed25519 sign alone, for comparison)", began)
    began = time.perf_counter()
    prev = ZERO_HASH
    for seq, group in enumerate(groups, 1):
        sealed = seal(Batch(unit=UNIT, gateway=GATEWAY, seq=seq, prev=prev, kind="data",
                            created=int(time.time() * 1000), readings=tuple(group)), key)
        prev = batch_hash(sealed)
    timed("protocol.seal + batch_hash, every batch (encode_body + header + sign)", began)
    return stages


# ---------------------------------------------------------------------------- the report

def rate(count: float, seconds: float) -> str:
    return f"{count / seconds:,.0f}" if seconds > 0 else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_profile(profile: cProfile.Profile, title: str, lines: int = 30) -> None:
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(lines)
        text = out.getvalue()
        body = text[text.find("   ncalls"):]
        print(f"\n--- cProfile, {title}, by {order} ---\n{body.rstrip()}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--readings", type=int, default=READINGS,
                        help="backlog size in readings (default 1,000,000)")
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)),
                        help="in-flight windows to compare, comma-separated (default 256,64)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed runs per path and window; the median is reported")
    parser.add_argument("--profile", action="store_true",
                        help="add a cProfile pass of the Kemon path at the first window")
    parser.add_argument("--no-field", action="store_true",
                        help="skip the field case (backlog sealed cycle by cycle beforehand)")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="skip timing each stage of sealing alone")
    args = parser.parse_args(argv)
    windows = [int(w) for w in args.windows.split(",") if w.strip()]
    # a SIGTERM unwinds like Ctrl-C: the broker is stopped and the temporary files removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print(f"Machine: {machine()}")
    print(f"Date: {dt.date.today().isoformat()}")
    with tempfile.TemporaryDirectory(prefix="kemon-bench-drain-") as tmp:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        files = pki.gateway(UNIT, GATEWAY)
        template = work / "backlog.sqlite"
        fill_s = fill(template, args.readings)
        print(f"Backlog: {args.readings:,} readings ({POINTS_PER_POLL} points a minute, "
              f"{-(-args.readings // POINTS_PER_POLL):,} poll cycles, one transaction each), "
              f"filled in {fill_s:.1f} s (not timed below); store file "
              f"{template.stat().st_size / 2**20:.0f} MiB")
        with Broker(pki, work / "broker", max_inflight_messages=BROKER_INFLIGHT) as broker:
            kemon: dict[int, list[KemonRun]] = {w: [] for w in windows}
            ceiling: dict[int, list[PahoRun]] = {w: [] for w in windows}
            reference: dict[int, PahoRun] = {}
            payloads: list[bytes] = []
            for r in range(args.rounds):
                for window in windows:
                    run, payloads = kemon_drain(template, work, broker, files, window,
                                                f"bench{window}r{r}")
                    kemon[window].append(run)
                    seconds = paho_drain(broker, files, payloads, window,
                                         f"bench-paho-{window}-{r}")
                    ceiling[window].append(PahoRun(window, len(payloads), run.readings,
                                                   seconds))
                    print(f"  round {r + 1} window {window}: Kemon {run.total_s:.2f} s "
                          f"(sealing {run.seal_s:.2f} + publishing {run.publish_s:.2f}), "
                          f"paho {seconds:.2f} s", flush=True)
            blob = random.Random(5).randbytes(REF_PAYLOAD)
            for window in windows:
                count = max(len(payloads), 1000)
                seconds = paho_drain(broker, files, [blob] * count, window,
                                     f"bench-paho-2k-{window}")
                reference[window] = PahoRun(window, count, 0, seconds)
            field: tuple[KemonRun, float] | None = None
            if not args.no_field:
                key = serialization.load_pem_private_key(files.key_path.read_bytes(), None)
                presealed = work / "presealed.sqlite"
                fill_s = fill(presealed, args.readings, seal_key=key)
                print(f"Field case: the same backlog sealed after every cycle while the link "
                      f"was down, as the runner does (filled in {fill_s:.1f} s, not timed)")
                run, payloads = kemon_drain(presealed, work, broker, files, windows[0],
                                            "benchfield")
                seconds = paho_drain(broker, files, payloads, windows[0], "bench-paho-field")
                field = (run, seconds)
                print(f"  window {windows[0]}: Kemon {run.total_s:.2f} s (sealing "
                      f"{run.seal_s:.2f} + publishing {run.publish_s:.2f}), paho "
                      f"{seconds:.2f} s", flush=True)
            profile = None
            if args.profile:
                profile = cProfile.Profile()
                prof_run, _ = kemon_drain(template, work, broker, files, windows[0],
                                          "benchprofile", profile)
        report(kemon, ceiling, reference, field)
        if not args.no_breakdown:
            print("\nSealing, stage by stage (each timed alone over the whole backlog):")
            print("| stage | seconds | µs a reading |")
            print("|---|---:|---:|")
            for what, seconds in seal_breakdown(template, work, files):
                print(f"| {what} | {seconds:.2f} | {seconds * 1e6 / args.readings:.2f} |")
        if profile is not None:
            print(f"\nProfiled run (window {windows[0]}, slower under cProfile): sealing "
                  f"{prof_run.seal_s:.2f} s, publishing {prof_run.publish_s:.2f} s")
            print_profile(profile, "Kemon path (sealing + uplink)")
    return 0


def report(kemon: dict[int, list[KemonRun]], ceiling: dict[int, list[PahoRun]],
           reference: dict[int, PahoRun], field: tuple[KemonRun, float] | None) -> None:
    def median_run(runs: list[KemonRun]) -> KemonRun:
        return sorted(runs, key=lambda k: k.total_s)[len(runs) // 2]

    first = median_run(next(iter(kemon.values())))
    per_batch = first.payload_bytes / first.batches
    per_reading = first.payload_bytes / first.readings
    print(f"\n{first.readings:,} readings sealed into {first.batches:,} batches of "
          f"{BATCH_SIZE}; {per_batch:,.0f} bytes a batch ({per_reading:.1f} bytes a reading), "
          f"MQTT 5 QoS 1 over TLS to {DATA_TOPIC}")
    rows = ["| path | window | readings/s | batches (messages)/s | seconds | of ceiling |",
            "|---|---:|---:|---:|---:|---:|"]
    verdicts = []
    for window, runs in kemon.items():
        run = median_run(runs)
        paho_s = statistics.median(p.seconds for p in ceiling[window])
        ratio = paho_s / run.total_s
        rows.append(f"| Kemon: `seal_pending` + `Uplink` | {window} | "
                    f"{rate(run.readings, run.total_s)} | {rate(run.batches, run.total_s)} | "
                    f"{run.total_s:.2f} | {ratio:.2f} |")
        rows.append(f"| paho loop, same payloads pre-built (ceiling) | {window} | "
                    f"{rate(run.readings, paho_s)} | {rate(run.batches, paho_s)} | "
                    f"{paho_s:.2f} | 1.00 |")
        verdicts.append((window, run, ratio))
    if field is not None:
        run, paho_s = field
        rows.append(f"| field case: sealed per cycle beforehand ({run.readings // run.batches}"
                    f" a batch, {run.payload_bytes / run.batches:,.0f} bytes), `Uplink` only | "
                    f"{run.window} | {rate(run.readings, run.total_s)} | "
                    f"{rate(run.batches, run.total_s)} | {run.total_s:.2f} | "
                    f"{paho_s / run.total_s:.2f} |")
        rows.append(f"| paho loop, the same {run.batches:,} payloads (ceiling) | {run.window} | "
                    f"{rate(run.readings, paho_s)} | {rate(run.batches, paho_s)} | "
                    f"{paho_s:.2f} | 1.00 |")
    print("\n" + "\n".join(rows))
    print("\nKemon path, where the time goes:")
    print("| window | sealing s | publishing s | sealing batches/s | publishing batches/s |")
    print("|---:|---:|---:|---:|---:|")
    for window, runs in kemon.items():
        run = median_run(runs)
        print(f"| {window} | {run.seal_s:.2f} | {run.publish_s:.2f} | "
              f"{rate(run.batches, run.seal_s)} | {rate(run.batches, run.publish_s)} |")
    print(f"\nReference (issue 3's ceiling figure): paho loop, {REF_PAYLOAD:,}-byte QoS 1 "
          "messages over TLS:")
    for window, ref in reference.items():
        print(f"  window {window}: {rate(ref.messages, ref.seconds)} messages/s "
              f"({ref.messages:,} in {ref.seconds:.2f} s)")
    print()
    for window, run, ratio in verdicts:
        speed = run.readings / run.total_s
        print(f"Goal at window {window}: ≥ {GOAL_READINGS_S:,} readings/s: "
              f"{verdict(speed >= GOAL_READINGS_S)} ({speed:,.0f}); ≥ {GOAL_RATIO} of the "
              f"ceiling: {verdict(ratio >= GOAL_RATIO)} ({ratio:.2f})")


if __name__ == "__main__":
    sys.exit(main())
