"""Batch encoding benchmark: bytes on the wire per reading, by encoding, and sealing time.

Run: ``.venv/bin/python bench/bench_encoding.py`` (a few seconds).

The data: one realistic batch of 200 readings from a 4-meter site polled every minute —
48 instant points (12 a meter) over 4 poll cycles (08:57 … 09:00 CST), plus the 15-minute and
hourly consumption of each meter's import counter closed at 09:00 (8 readings). The meters
differ the way real ones do, because that decides what a value costs:

- two Modbus meters with ``float32`` registers (SDM630-like): every value is a float32 widened
  to a double (230.4 V arrives as 230.39999389648438);
- one DL/T 645-2007 meter: BCD with fixed decimals (energy XXXXXX.XX, voltage XXX.X,
  current XXX.XXX, power XX.XXXX, power factor X.XXX, frequency XX.XX), divided by 10**d as
  ``gateway/_dlt645.py`` does, so the values are short decimals (157904.83, 230.4);
- one Modbus meter with integer registers and a scale (0.1 V, 0.01 A, 0.001 kW, 0.001 kWh),
  multiplied as ``gateway/_registers.py`` does (157904828 * 0.001 = 157904.828, but
  2301 * 0.1 = 230.10000000000002).

Consumption values are counter differences (0.13999999999941792 kWh). Qualities: mostly good,
one meter late for a cycle, two communication errors, one estimated interval.

Each encoding's figure is the whole MQTT payload divided by the readings in it; the batch
encodings are compared with the same 152-byte signed envelope (header, unit, gateway,
64-byte signature) added, so "sealing included" holds for all of them. "+MQTT" adds the
MQTT 5 PUBLISH framing for QoS 1 (fixed header, topic, packet id, empty properties).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import ec, ed25519  # noqa: E402

from protocol import (  # noqa: E402
    ZERO_HASH,
    Batch,
    Period,
    Quality,
    Reading,
    batch_hash,
    peek,
    seal,
    to_ms,
    unseal,
)
from protocol import _batch_codec as codec  # noqa: E402

UNIT = "91320100MA1ABCDE0C"
GATEWAY = "GW0001"
TOPIC = f"kemon/v1/{UNIT}/{GATEWAY}/up/data"
F32 = struct.Struct(">f")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.platform()} | {cpu} x{os.cpu_count()} | Python "
            f"{platform.python_version()} | zlib {zlib.ZLIB_RUNTIME_VERSION} | "
            f"msgspec {msgspec.__version__}")


# ---------------------------------------------------------------- the data

# (name, mean, wobble per poll, DL/T 645 decimals, Modbus integer scale); counters rise instead
QUANTITIES = [
    ("ua", 230.4, 0.6, 1, 0.1), ("ub", 229.8, 0.6, 1, 0.1), ("uc", 231.1, 0.6, 1, 0.1),
    ("ia", 12.46, 0.3, 3, 0.01), ("ib", 11.93, 0.3, 3, 0.01), ("ic", 12.88, 0.3, 3, 0.01),
    ("p", 8.3127, 0.25, 4, 0.001), ("pf", 0.972, 0.004, 3, 0.001), ("f", 50.01, 0.02, 2, 0.01),
]
COUNTERS = [  # (name, value at 08:57, kWh per minute, DL/T 645 decimals, Modbus integer scale)
    ("ep", 157904.828, 0.139, 2, 0.001), ("en", 1270.5, 0.0, 2, 0.001),
    ("eq", 45210.61, 0.021, 2, 0.001),
]
METERS = ("float32", "float32", "dlt645", "scaled")


def as_read(kind: str, value: float, decimals: int, scale: float) -> float:
    """``value`` as the gateway stores it after reading it from a meter of ``kind``."""
    if kind == "float32":
        single: float = F32.unpack(F32.pack(value))[0]
        return single
    if kind == "dlt645":
        pow10: int = 10**decimals
        return round(value * pow10) / pow10
    return round(value / scale) * scale


def make_batch_readings(seed: int = 7, cycles: int = 4) -> list[Reading]:
    """The benchmark batch: 48 instants a cycle, then the closed consumption intervals."""
    rng = random.Random(seed)
    t0 = to_ms(__import__("datetime").datetime(2026, 11, 27, 8, 57))
    readings: list[Reading] = []
    start_counts: dict[str, float] = {}
    end_counts: dict[str, float] = {}
    for cycle in range(cycles):
        ts = t0 + cycle * 60_000
        for m, kind in enumerate(METERS):
            quality = Quality.LATE if (m == 1 and cycle % 4 == 2) else Quality.GOOD
            for q, (name, mean, wobble, dec, scale) in enumerate(QUANTITIES):
                code = f"01010{m + 1:03d}01{q + 1:04d}01"
                value = as_read(kind, mean * (1 + 0.01 * m) + rng.uniform(-wobble, wobble),
                                dec, scale)
                qual = quality
                if m == 3 and cycle % 4 == 1 and name in ("ia", "ib"):
                    qual, value = Quality.COMM_ERROR, 0.0
                readings.append(Reading(code, Period.INSTANT, ts, value, qual))
            for c, (_name, v0, rate, dec, scale) in enumerate(COUNTERS):
                code = f"01010{m + 1:03d}02{c + 1:04d}01"
                raw = v0 * (1 + 0.1 * m) + rate * cycle + rng.uniform(0, 0.002)
                value = as_read(kind, raw, dec, scale)
                if c == 0:
                    start_counts.setdefault(code, value - 15 * rate)
                    end_counts[code] = value
                readings.append(Reading(code, Period.INSTANT, ts, value, quality))
    close = t0 + 3 * 60_000                     # 09:00: the 08:45 interval and 08:00 hour close
    for n, (code, end) in enumerate(end_counts.items()):
        quality = Quality.ESTIMATED if n == 2 else Quality.GOOD
        readings.append(Reading(code, Period.MIN15, close - 15 * 60_000,
                                end - start_counts[code], quality))
        readings.append(Reading(code, Period.HOUR, close - 60 * 60_000,
                                (end - start_counts[code]) * 3.93, Quality.GOOD))
    return readings


# ---------------------------------------------------------------- the encodings

def json_per_reading(readings: Sequence[Reading]) -> list[bytes]:
    """One message per reading: CONTRACT.md's reading JSON with unit and gateway."""
    return [json.dumps({"unit": UNIT, "gateway": GATEWAY, **r.to_json_dict()},
                       separators=(",", ":")).encode() for r in readings]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _pb_varint(number: int, value: int) -> bytes:
    return _field(number, 0) + _varint(value)


def _pb_bytes(number: int, value: bytes) -> bytes:
    return _field(number, 2) + _varint(len(value)) + value


def _pb_double(number: int, value: float) -> bytes:
    return _field(number, 1) + struct.pack("<d", value)


# Sparkplug B (Eclipse Tahu sparkplug_b.proto): Payload.timestamp=1, metrics=2, seq=3;
# Metric.name=1, alias=2, timestamp=3, datatype=4, properties=9, double_value=13;
# PropertySet.keys=1, values=2; PropertyValue.type=1, int_value=3; DataType Double=10, Int32=3.
# Quality as the "Quality" property with OPC DA codes (192 good, 0 bad, 64 uncertain), present
# only when not good, as Sparkplug hosts such as Ignition read it.
_SP_DOUBLE, _SP_INT32 = 10, 3
_OPC = {Quality.GOOD: 192, Quality.LATE: 64, Quality.ESTIMATED: 64, Quality.COMM_ERROR: 0}


def sparkplug(readings: Sequence[Reading], *, aliases: bool, deflate: bool) -> bytes:
    """A Sparkplug-B-like DDATA payload: one metric per reading with its own timestamp.

    The period has no Sparkplug field; it is part of the metric name (``code/15min``), or, with
    ``aliases``, of the alias an NBIRTH would have declared (names then are not sent). With
    ``deflate`` the payload is wrapped the way Sparkplug's compression does: an outer Payload
    whose ``body`` is the DEFLATE of the inner one and whose "algorithm" metric says so.
    """
    alias_of: dict[tuple[str, str], int] = {}
    metrics = []
    for r in readings:
        key = (r.point, str(r.period))
        m = b""
        if aliases:
            m += _pb_varint(2, alias_of.setdefault(key, len(alias_of) + 1))
        else:
            name = r.point if r.period is Period.INSTANT else f"{r.point}/{r.period}"
            m += _pb_bytes(1, name.encode())
        m += _pb_varint(3, r.ts) + _pb_varint(4, _SP_DOUBLE)
        if r.quality != Quality.GOOD:
            value = _pb_varint(1, _SP_INT32) + _pb_varint(3, _OPC.get(Quality(r.quality), 0))
            m += _pb_bytes(9, _pb_bytes(1, b"Quality") + _pb_bytes(2, value))
        m += _pb_double(13, r.value)
        metrics.append(_pb_bytes(2, m))
    payload = _pb_varint(1, readings[0].ts) + b"".join(metrics) + _pb_varint(3, 17)
    if not deflate:
        return payload
    algorithm = _pb_bytes(2, _pb_bytes(1, b"algorithm") + _pb_varint(4, 12)
                          + _pb_bytes(15, b"DEFLATE"))
    return algorithm + _pb_bytes(5, zlib.compress(payload, 9))


def json_rows_zlib(readings: Sequence[Reading], level: int = 9) -> bytes:
    """A batch object with unit/gateway once and CONTRACT.md reading objects as rows."""
    doc = {"seq": 17, "kind": "data", "readings": [r.to_json_dict() for r in readings]}
    return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), level)


def json_arrays_zlib(readings: Sequence[Reading]) -> bytes:
    """Rows as arrays [point, period, ts ms, value, quality]."""
    rows = [[r.point, str(r.period), r.ts, r.value, str(r.quality)] for r in readings]
    return zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 9)


def columns(readings: Sequence[Reading]) -> dict[str, Any]:
    """Point and quality tables, indexes, time deltas; values untouched."""
    points: dict[str, int] = {}
    quals: dict[str, int] = {}
    periods = [str(p) for p in Period]
    prev = readings[0].ts
    cols: dict[str, Any] = {"points": [], "quals": [], "base": prev, "p": [], "per": [],
                            "q": [], "dt": [], "v": []}
    for r in readings:
        cols["p"].append(points.setdefault(r.point, len(points)))
        cols["per"].append(periods.index(str(r.period)))
        cols["q"].append(quals.setdefault(str(r.quality), len(quals)))
        cols["dt"].append(r.ts - prev)
        prev = r.ts
        cols["v"].append(r.value)
    cols["points"], cols["quals"] = list(points), list(quals)
    return cols


def columnar_json_zlib(readings: Sequence[Reading]) -> bytes:
    return zlib.compress(json.dumps(columns(readings), separators=(",", ":")).encode(), 9)


def columnar_msgpack_zlib(readings: Sequence[Reading]) -> bytes:
    return zlib.compress(msgspec.msgpack.encode(columns(readings)), 9)


def columnar_msgpack_shuffled(readings: Sequence[Reading]) -> bytes:
    """Values as float64 bytes in byte planes (all first bytes, then all second bytes …)."""
    cols = columns(readings)
    raw = struct.pack(f">{len(cols['v'])}d", *cols["v"])
    cols["v"] = b"".join(raw[i::8] for i in range(8))
    return zlib.compress(msgspec.msgpack.encode(cols), 9)


def chosen(readings: Sequence[Reading], level: int = codec.ZLIB_LEVEL) -> bytes:
    """The production body (protocol._batch_codec) at a given zlib level."""
    saved = codec.ZLIB_LEVEL
    codec.ZLIB_LEVEL = level
    try:
        return codec.encode_body(readings, None)
    finally:
        codec.ZLIB_LEVEL = saved


def mqtt_overhead(topic: str, payload: int) -> int:
    """MQTT 5 PUBLISH at QoS 1: fixed header, topic, packet id, empty properties."""
    remaining = 2 + len(topic) + 2 + 1 + payload
    return 1 + len(_varint(remaining)) + 2 + len(topic) + 2 + 1


# ---------------------------------------------------------------- running

def sizes(readings: list[Reading], envelope: int) -> list[tuple[str, float, float]]:
    n = len(readings)
    rows: list[tuple[str, float, float]] = []
    singles = json_per_reading(readings)
    total = sum(len(s) for s in singles)
    framed = total + sum(mqtt_overhead(TOPIC.replace("batch", "reading"), len(s))
                         for s in singles)
    rows.append(("(a) JSON, one message per reading (unsigned)", total / n, framed / n))
    sp_topic = "spBv1.0/320100/DDATA/GW0001/site"
    for label, payload in (
        ("(b) Sparkplug-B-like protobuf, metric names (unsigned)",
         sparkplug(readings, aliases=False, deflate=False)),
        ("(b2) Sparkplug-B-like protobuf, aliases (unsigned)",
         sparkplug(readings, aliases=True, deflate=False)),
        ("(b3) Sparkplug-B-like, aliases, DEFLATE body (unsigned)",
         sparkplug(readings, aliases=True, deflate=True)),
    ):
        rows.append((label, len(payload) / n,
                     (len(payload) + mqtt_overhead(sp_topic, len(payload))) / n))
    batch: list[tuple[str, Callable[[list[Reading]], bytes]]] = [
        ("(c) JSON rows (objects) + zlib 9, sealed", json_rows_zlib),
        ("(c2) JSON rows (arrays, ts in ms) + zlib 9, sealed", json_arrays_zlib),
        ("(d) columnar JSON + zlib 9, sealed", columnar_json_zlib),
        ("(e) columnar msgpack, float64 values + zlib 9, sealed", columnar_msgpack_zlib),
        ("(e2) columnar msgpack, byte-shuffled float64 + zlib 9, sealed",
         columnar_msgpack_shuffled),
        ("(f) chosen, but zlib 9, sealed", lambda rs: chosen(rs, 9)),
        ("(f) chosen, but zlib 1, sealed", lambda rs: chosen(rs, 1)),
        ("(f) chosen: columnar msgpack, decimal/f32/f64 + deltas, zlib 6, sealed", chosen),
    ]
    for label, encode in batch:
        size = len(encode(readings)) + envelope
        rows.append((label, size / n, (size + mqtt_overhead(TOPIC, size)) / n))
    return rows


def by_size(key: Any) -> None:
    """Bytes a reading of the sealed batch as the batch grows (same data, first n readings)."""
    print(f"\n{'readings a batch (instants only)':<34}{'sealed bytes':>14}{'B/reading':>11}")
    for n in (1, 10, 50, 100, 200, 500, 1000, 10_000):
        rs = make_batch_readings(cycles=n // 48 + 1)[:n]
        size = len(seal(Batch(UNIT, GATEWAY, 1, ZERO_HASH, "data", rs[-1].ts, tuple(rs)), key))
        print(f"{n:<34}{size:>14,}{size / n:>11.1f}")


def timing(batch: Batch, key: Any, rounds: int) -> list[tuple[float, float]]:
    """(median, fastest) µs per batch: seal, unseal with verification, unseal without, peek."""
    def us(fn: Callable[[], object]) -> tuple[float, float]:
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1e6)
        return statistics.median(samples), min(samples)
    sealed = seal(batch, key)
    public = key.public_key()
    assert unseal(sealed, public) == batch
    return [us(lambda: seal(batch, key)), us(lambda: unseal(sealed, public)),
            us(lambda: unseal(sealed, None)), us(lambda: peek(sealed))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300, help="timing rounds (median)")
    args = parser.parse_args()
    readings = make_batch_readings()
    assert len(readings) == 200 and all(math.isfinite(r.value) for r in readings)
    batch = Batch(unit=UNIT, gateway=GATEWAY, seq=17, prev=batch_hash(b"seq 16"), kind="data",
                  created=readings[-1].ts + 2_000, readings=tuple(readings))
    key = ec.generate_private_key(ec.SECP256R1())
    sealed = seal(batch, key)
    envelope = len(sealed) - len(codec.encode_body(readings, None))
    kinds = codec._DECODER.decode(zlib.decompress(codec.encode_body(readings, None))).kinds
    print(f"machine: {machine()}")
    print(f"batch: {len(readings)} readings, {len({r.point for r in readings})} point codes;"
          f" values written as decimal {kinds.count(0)}, float32 {kinds.count(1)},"
          f" float64 {kinds.count(2)}; envelope {envelope} bytes (header + 64-byte signature)")
    print(f"\n{'encoding':<74}{'B/reading':>10}{'+MQTT':>8}")
    for label, per, framed in sizes(readings, envelope):
        print(f"{label:<74}{per:>10.2f}{framed:>8.2f}")
    print(f"sealed batch: {len(sealed)} bytes = {len(sealed) / len(readings):.1f} B/reading; "
          f"goal <= 12: {'met' if len(sealed) / len(readings) <= 12 else 'NOT met'}")
    assert unseal(sealed, key.public_key()).prev == batch.prev and batch.prev != ZERO_HASH
    by_size(key)
    print(f"\ntime per 200-reading batch, µs: median (fastest) of {args.rounds}")
    print(f"{'':<24}{'seal':>14}{'unseal+verify':>16}{'unseal, no key':>16}{'peek':>12}")
    for label, k in (("ECDSA P-256 / SHA-256", key),
                     ("Ed25519", ed25519.Ed25519PrivateKey.generate())):
        cells = [f"{med:.0f} ({low:.0f})" for med, low in timing(batch, k, args.rounds)]
        print(f"{label:<24}" + "".join(f"{c:>{w}}" for c, w in zip(cells, (14, 16, 16, 12),
                                                                   strict=True)))


if __name__ == "__main__":
    main()
