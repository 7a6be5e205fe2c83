"""Sealed batches: exact round trips, signatures, the hash chain, and hostile input.

The envelope is rebuilt here from its documented layout (docs/batch-format.md), so the tests
can sign bodies the sealer would never write (wrong schema, zip bombs, nested containers) and
check that only ``BatchFormatError`` comes out, after the signature has verified.
"""

from __future__ import annotations

import itertools
import math
import struct
import time
import zlib
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol._batch
from bench.bench_encoding import make_batch_readings
from protocol import (
    BATCH_KINDS,
    MAX_SEALED_BYTES,
    ZERO_HASH,
    Batch,
    BatchError,
    BatchFormatError,
    BatchHeader,
    BatchSignatureError,
    Period,
    Quality,
    Reading,
    batch_hash,
    peek,
    seal,
    unseal,
)

from .conftest import UNIT

GATEWAY = "GW0001"
T0 = 1_795_740_000_000                      # 2026-11-27T08:00:00+08:00
TS_MAX = 253_402_300_799_999
F32 = struct.Struct(">f")
FIXED = struct.Struct(">4sBBBBBQqII32s")    # docs/batch-format.md, offsets 0-64

EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
KEYS: dict[str, Any] = {"ecdsa-p256": EC_KEY, "ed25519": ED_KEY}
ALGORITHM = {"ecdsa-p256": 1, "ed25519": 2}


def bits(value: float) -> bytes:
    return struct.pack(">d", value)


def same(a: tuple[Reading, ...], b: tuple[Reading, ...]) -> bool:
    """Equal readings, and every value equal bit for bit (so -0.0 is not 0.0)."""
    return a == b and [bits(r.value) for r in a] == [bits(r.value) for r in b]


def make(readings: list[Reading] | tuple[Reading, ...], *, seq: int = 1,
         prev: bytes = ZERO_HASH, kind: str = "data",
         info: dict[str, Any] | None = None) -> Batch:
    return Batch(unit=UNIT, gateway=GATEWAY, seq=seq, prev=prev, kind=kind, created=T0 + 5_000,
                 readings=tuple(readings), info=info)


def series(n: int = 20) -> list[Reading]:
    """A few points over a few cycles: decimals, float32 values, float64 differences."""
    out = []
    for i in range(n):
        cycle, point = divmod(i, 4)
        ts = T0 + cycle * 60_000
        out.append(Reading("0101000101000101", Period.INSTANT, ts, 157904.828 + 0.137 * cycle))
        out.append(Reading(f"0101000101000{point}02", Period.INSTANT, ts,
                           F32.unpack(F32.pack(230.4 + cycle / 10))[0], Quality.LATE))
    out.append(Reading("0101000101000101", Period.MIN15, T0 - 900_000, 0.782000000006,
                       Quality.ESTIMATED))
    return out[:n]


def envelope(body: bytes, count: int, key: Any = ED_KEY, *, seq: int = 1,
             kind: int = 0, unit: bytes = UNIT.encode(), gateway: bytes = GATEWAY.encode(),
             magic: bytes = b"KEMB", version: int = 1) -> bytes:
    """A sealed batch written from the documented layout, signed with ``key``."""
    algorithm = 2 if isinstance(key, ed25519.Ed25519PrivateKey) else 1
    head = FIXED.pack(magic, version, algorithm, kind, len(unit), len(gateway), seq, T0,
                      count, len(body), ZERO_HASH)
    signed = head + unit + gateway + body
    if algorithm == 2:
        signature: bytes = key.sign(signed)
        return signed + signature
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
    return signed + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def body(*, info: Any = None, points: Any = ("P1",), qualities: Any = ("good",),
         base: Any = T0, point_ix: Any = (0,), period_ix: bytes = b"\0",
         quality_ix: Any = (0,), dts: Any = (0,), kinds: bytes = b"\0", exps: Any = (-1,),
         mants: Any = (2304,), f32: bytes = b"", f64: bytes = b"") -> list[Any]:
    """A body's columns (one reading, 230.4 by default) as the documented msgpack array."""
    return [info, list(points), list(qualities), base, list(point_ix), period_ix,
            list(quality_ix), list(dts), kinds, list(exps), list(mants), f32, f64]


def packed(columns: list[Any]) -> bytes:
    return zlib.compress(bytes(msgspec.msgpack.encode(columns)))


# ---------------------------------------------------------------- round trips

codes = st.one_of(st.sampled_from(["0000000001000001", "a", "Z.9-_"]),
                  st.from_regex(r"[0-9A-Za-z._-]{1,64}", fullmatch=True))
words = st.one_of(st.sampled_from(list(Quality)),
                  st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True))
values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.decimals(min_value=-10**9, max_value=10**9, places=3, allow_nan=False).map(float),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1.7976931348623157e308, 1e22, 1e23,
                     123456789.0, 1234567890.0, 0.1 + 0.2, 2.0**53 + 2]),
)
readings = st.builds(Reading, codes, st.sampled_from(list(Period)),
                     st.integers(0, TS_MAX), values, words)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, max_size=40), st.sampled_from(BATCH_KINDS),
       st.integers(1, 2**63 - 1), st.binary(min_size=32, max_size=32))
def test_any_readings_round_trip_exactly(rs: list[Reading], kind: str, seq: int,
                                         prev: bytes) -> None:
    batch = make(rs, seq=seq, prev=prev, kind=kind)
    sealed = seal(batch, ED_KEY)
    back = unseal(sealed, ED_KEY.public_key())
    assert back == batch
    assert same(back.readings, batch.readings)
    assert peek(sealed) == BatchHeader(UNIT, GATEWAY, seq, prev, kind, batch.created, len(rs))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), values), min_size=1, max_size=60))
def test_series_of_few_points_round_trip_exactly(steps: list[tuple[int, float]]) -> None:
    # few points, many values each: the delta and XOR paths are taken again and again
    rs = [Reading(f"P{p}", Period.INSTANT, T0 + i * 1000, v) for i, (p, v) in enumerate(steps)]
    back = unseal(seal(make(rs), ED_KEY), None)
    assert same(back.readings, tuple(rs))


@pytest.mark.parametrize("value", [
    157904.828, 230.4, -230.4, 50.0, 0.0, -0.0, 1e-05, 5e-324, 2.2250738585072014e-308,
    1.7976931348623157e308, -1.7976931348623157e308, 1e22, 1e23, 999999999.0, 1e9,
    123456789e-300, F32.unpack(F32.pack(230.4))[0], 3.4028234663852886e38, 0.1 + 0.2,
    157905.61 - 157904.828,
])
def test_value_vectors_round_trip_bit_for_bit(value: float) -> None:
    rs = [Reading("P", Period.INSTANT, T0, value), Reading("P", Period.INSTANT, T0 + 1, value),
          Reading("P", Period.INSTANT, T0 + 2, -value)]
    back = unseal(seal(make(rs), EC_KEY), EC_KEY.public_key())
    assert same(back.readings, tuple(rs))


def test_known_quality_words_come_back_as_quality_and_new_words_as_text() -> None:
    rs = [Reading("P", Period.DAY, T0, 1.0, "late"), Reading("P", Period.DAY, T0, 2.0, "new_word")]
    back = unseal(seal(make(rs), ED_KEY), None).readings
    assert back[0].quality is Quality.LATE
    assert back[1].quality == "new_word"
    assert back[0].period is Period.DAY


def test_info_round_trips_with_its_types() -> None:
    gap = {"reason": "disk budget exhausted before delivery", "lost_seq": [812, 990],
           "readings": 12_345, "since": "2026-11-27T08:00:00+08:00", "until": None,
           "ratio": 0.25, "complete": False, "huge": 2**64 - 1, "tiny": -(2**63)}
    back = unseal(seal(make([], kind="gap", info=gap), ED_KEY), ED_KEY.public_key())
    assert back.info == gap
    assert back.kind == "gap" and back.readings == ()
    assert back.info is not None and back.info["complete"] is False


def test_info_nests_three_containers_deep_and_tuples_come_back_as_lists() -> None:
    resend = {"request": {"since": "2026-11-27T08:00:00+08:00", "range": (1, 2),
                          "deep": {"list": [1, "two"]}}, "destination": "province"}
    back = unseal(seal(make(series(3), kind="resend", info=resend), EC_KEY), None)
    assert back.info == {"request": {"since": "2026-11-27T08:00:00+08:00", "range": [1, 2],
                                     "deep": {"list": [1, "two"]}}, "destination": "province"}


def test_the_benchmark_batch_seals_within_12_bytes_a_reading() -> None:
    rs = make_batch_readings()
    assert len(rs) == 200
    sealed = seal(make(rs), EC_KEY)
    assert len(sealed) <= 12 * 200, f"{len(sealed) / 200:.1f} bytes a reading"
    assert same(unseal(sealed, EC_KEY.public_key()).readings, tuple(rs))


# ---------------------------------------------------------------- the envelope

@pytest.mark.parametrize("name", list(KEYS))
def test_layout_is_as_documented(name: str) -> None:
    key = KEYS[name]
    batch = make(series(), seq=7, prev=bytes(range(32)), kind="resend", info={"request": "r1"})
    sealed = seal(batch, key)
    (magic, version, algorithm, kind, n_unit, n_gateway, seq, created, count, n_body,
     prev) = FIXED.unpack_from(sealed)
    assert (magic, version, algorithm, kind) == (b"KEMB", 1, ALGORITHM[name], 1)
    assert (seq, created, count, prev) == (7, batch.created, len(batch.readings), batch.prev)
    assert sealed[65:65 + n_unit] == UNIT.encode()
    assert sealed[65 + n_unit:65 + n_unit + n_gateway] == GATEWAY.encode()
    assert len(sealed) == 65 + n_unit + n_gateway + n_body + 64
    # the envelope written by the test carries the same body and reads back the same
    at = 65 + n_unit + n_gateway
    rebuilt = envelope(sealed[at:at + n_body], count, key, seq=7, kind=1)
    assert unseal(rebuilt, key.public_key()).readings == batch.readings


def test_batch_hash_is_sha256_of_the_sealed_bytes() -> None:
    sealed = seal(make(series()), ED_KEY)
    assert batch_hash(sealed) == __import__("hashlib").sha256(sealed).digest()
    assert len(ZERO_HASH) == 32 and not any(ZERO_HASH)


def test_peek_matches_unseal_without_inflating() -> None:
    sealed = seal(make(series(), seq=42, kind="resend"), EC_KEY)
    header = peek(sealed)
    batch = unseal(sealed, EC_KEY.public_key())
    assert (header.unit, header.gateway, header.seq, header.prev, header.kind, header.created,
            header.count) == (batch.unit, batch.gateway, batch.seq, batch.prev, batch.kind,
                              batch.created, len(batch.readings))
    # a body that is not zlib at all: peek still reads the header, unseal refuses
    garbage = envelope(b"not zlib", 3, seq=9)
    assert peek(garbage).seq == 9 and peek(garbage).count == 3
    with pytest.raises(BatchFormatError, match="zlib"):
        unseal(garbage, ED_KEY.public_key())


def test_a_chain_of_batches_links_by_hash() -> None:
    sealed, prev = [], ZERO_HASH
    for seq in range(1, 6):
        sealed.append(seal(make(series(seq), seq=seq, prev=prev), EC_KEY))
        prev = batch_hash(sealed[-1])
    assert unseal(sealed[0], EC_KEY.public_key()).prev == ZERO_HASH
    for before, after in itertools.pairwise(sealed):
        assert unseal(after, EC_KEY.public_key()).prev == batch_hash(before)
        assert peek(after).seq == peek(before).seq + 1


# ---------------------------------------------------------------- signatures

@pytest.mark.parametrize("name", list(KEYS))
def test_every_flipped_bit_is_refused(name: str) -> None:
    key = KEYS[name]
    sealed = seal(make(series(12)), key)
    for i in range(len(sealed)):
        for mask in (0x01, 0x80):
            tampered = bytearray(sealed)
            tampered[i] ^= mask
            with pytest.raises((BatchSignatureError, BatchFormatError)):
                unseal(bytes(tampered), key.public_key())


@pytest.mark.parametrize("name", list(KEYS))
def test_truncated_or_extended_batches_are_refused(name: str) -> None:
    key = KEYS[name]
    sealed = seal(make(series(12)), key)
    for cut in range(len(sealed)):
        with pytest.raises(BatchFormatError):
            unseal(sealed[:cut], key.public_key())
    with pytest.raises(BatchFormatError):
        unseal(sealed + b"\0", key.public_key())


def test_another_keys_signature_is_refused() -> None:
    sealed_ec = seal(make(series()), EC_KEY)
    sealed_ed = seal(make(series()), ED_KEY)
    with pytest.raises(BatchSignatureError, match="does not verify"):
        unseal(sealed_ec, ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(BatchSignatureError, match="does not verify"):
        unseal(sealed_ed, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(BatchSignatureError, match="signed with Ed25519"):
        unseal(sealed_ed, EC_KEY.public_key())
    with pytest.raises(BatchSignatureError, match="signed with ECDSA P-256"):
        unseal(sealed_ec, ED_KEY.public_key())
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    with pytest.raises(BatchSignatureError, match="cannot verify"):
        unseal(sealed_ec, rsa_public)
    with pytest.raises(BatchSignatureError, match="secp384r1 key cannot verify"):
        unseal(sealed_ec, ec.generate_private_key(ec.SECP384R1()).public_key())


def test_a_signature_moved_to_another_batch_is_refused() -> None:
    one, two = seal(make(series(3)), ED_KEY), seal(make(series(4)), ED_KEY)
    with pytest.raises(BatchSignatureError):
        unseal(two[:-64] + one[-64:], ED_KEY.public_key())


def test_only_p256_and_ed25519_keys_seal() -> None:
    with pytest.raises(BatchSignatureError, match="only ECDSA P-256 and Ed25519"):
        seal(make(series()), ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(BatchSignatureError, match="only ECDSA P-256 and Ed25519"):
        seal(make(series()), rsa.generate_private_key(public_exponent=65537, key_size=1024))


def test_decode_only_needs_no_key() -> None:
    sealed = seal(make(series()), EC_KEY)
    forged = sealed[:-64] + bytes(64)
    assert unseal(forged, None).readings == tuple(series())
    with pytest.raises(BatchSignatureError):
        unseal(forged, EC_KEY.public_key())


# ---------------------------------------------------------------- what seal refuses

R = Reading("P", Period.INSTANT, T0, 1.0)


@pytest.mark.parametrize(("change", "reason"), [
    ({"unit": "91320100MA1ABCDE0D"}, "unit"),
    ({"unit": "91320100ma1abcde0c"}, "must be written"),
    ({"gateway": "GW 1"}, "gateway id"),
    ({"seq": 0}, "seq"),
    ({"seq": 2**63}, "seq"),
    ({"prev": b"short"}, "prev"),
    ({"kind": "other"}, "kind"),
    ({"created": -1}, "created"),
    ({"created": 1.5}, "created"),
    ({"readings": (Reading("bad code", Period.INSTANT, T0, 1.0),)}, "point code"),
    ({"readings": (Reading("P", "week", T0, 1.0),)}, "period"),  # type: ignore[arg-type]
    ({"readings": (Reading("P", Period.INSTANT, T0, 1.0, "Bad Word"),)}, "quality"),
    ({"readings": (Reading("P", Period.INSTANT, -1, 1.0),)}, "ts"),
    ({"readings": (Reading("P", Period.INSTANT, TS_MAX + 1, 1.0),)}, "ts"),
    ({"readings": (Reading("P", Period.INSTANT, T0, math.nan),)}, "finite"),
    ({"readings": (Reading("P", Period.INSTANT, T0, math.inf),)}, "finite"),
    ({"readings": (Reading("P", Period.INSTANT, T0, "1"),)}, "number"),  # type: ignore[arg-type]
    ({"readings": (Reading("P", Period.INSTANT, T0, 10**400),)}, "too large"),
    ({"readings": ("not a reading",)}, "not a Reading"),
    ({"readings": (R,) * 10_001}, "at most 10000"),
    ({"info": {"a": {"b": [{"c": [1]}]}}}, "more than 3 deep"),
    ({"info": {"": 1}}, "key"),
    ({"info": {"k" * 65: 1}}, "key"),
    ({"info": {1: 1}}, "key"),
    ({"info": {f"k{i}": i for i in range(33)}}, "at most 32"),
    ({"info": {"list": list(range(33))}}, "at most 32"),
    ({"info": {"x": math.nan}}, "finite"),
    ({"info": {"x": [1.0, math.inf]}}, "finite"),
    ({"info": {"x": 2**64}}, "64 bits"),
    ({"info": {"x": "y" * 1025}}, "longer"),
    ({"info": {f"k{i}": "y" * 1000 for i in range(9)}}, "larger than 8192"),
    ({"info": {"x": b"bytes"}}, "only text"),
    ({"info": {"x": {1, 2}}}, "only text"),
    ({"info": ["not", "a", "mapping"]}, "mapping"),
])
def test_seal_refuses_what_cannot_be_sealed(change: dict[str, Any], reason: str) -> None:
    fields: dict[str, Any] = {"unit": UNIT, "gateway": GATEWAY, "seq": 1, "prev": ZERO_HASH,
                              "kind": "data", "created": T0, "readings": (R,), "info": None}
    fields |= change
    with pytest.raises(BatchFormatError, match=reason):
        seal(Batch(**fields), ED_KEY)


def test_seal_refuses_a_batch_larger_than_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol._batch, "MAX_SEALED_BYTES", 400)
    with pytest.raises(BatchFormatError, match="seal fewer readings"):
        seal(make([Reading(f"P{i}", Period.INSTANT, T0, i / 7) for i in range(100)]), ED_KEY)


# ---------------------------------------------------------------- hostile input

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_a_format_error(data: bytes) -> None:
    for call in (peek, lambda d: unseal(d, None), lambda d: unseal(d, ED_KEY.public_key())):
        with pytest.raises(BatchFormatError):
            call(data)


VALID = seal(make(series(8), info={"request": "r-17"}), ED_KEY)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255),
                          st.sampled_from(["set", "insert", "delete"])), min_size=1, max_size=4))
def test_mutations_of_a_valid_batch_never_raise_anything_else(
        edits: list[tuple[int, int, str]]) -> None:
    data = bytearray(VALID)
    for position, byte, how in edits:
        at = min(position, len(data) - 1)
        if how == "set":
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        else:
            del data[at]
    mutated = bytes(data)
    reason = ""
    try:
        peek(mutated)
        unseal(mutated, None)
    except BatchFormatError as exc:     # anything else fails the test
        reason = str(exc)
    assert "\n" not in reason
    if mutated != VALID:
        with pytest.raises(BatchError):
            unseal(mutated, ED_KEY.public_key())


@pytest.mark.parametrize("data", [b"", b"KEMB", b"\0" * 200, b"{}", b"[" * 5000 + b"]" * 5000])
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(BatchFormatError):
        unseal(data, None)
    with pytest.raises(BatchFormatError):
        peek(data)


def test_huge_payload_is_refused_before_anything_else() -> None:
    sealed = seal(make(series()), ED_KEY)
    huge = sealed + bytes(MAX_SEALED_BYTES)
    started = time.perf_counter()
    with pytest.raises(BatchFormatError, match="larger than a batch may be"):
        unseal(huge, ED_KEY.public_key())
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(("change", "reason"), [
    ({"magic": b"KEMX"}, "not a Kemon batch"),
    ({"version": 2}, "version 2"),
    ({"kind": 3}, "unknown batch kind"),
    ({"unit": b"91320100MA1ABCDE0D"}, "unit"),
    ({"unit": b"\xff" * 18}, "bad header"),
    ({"gateway": b""}, "gateway id"),
    ({"seq": 0}, "seq"),
    ({"count": 10_001}, "at most 10000"),
])
def test_bad_headers_are_format_errors(change: dict[str, Any], reason: str) -> None:
    count = change.pop("count", 1)
    data = envelope(packed(body()), count, **change)
    with pytest.raises(BatchFormatError, match=reason):
        peek(data)
    with pytest.raises(BatchFormatError, match=reason):
        unseal(data, ED_KEY.public_key())


def test_a_hand_built_body_reads_back() -> None:
    # the documented body, written by hand: the test's picture of the format is the real one
    data = envelope(packed(body(info={"request": "r1"})), 1, ED_KEY)
    batch = unseal(data, ED_KEY.public_key())
    assert batch.readings == (Reading("P1", Period.INSTANT, T0, 230.4, Quality.GOOD),)
    assert batch.info == {"request": "r1"}
    two = body(point_ix=(0, 0), period_ix=b"\0\0", quality_ix=(0, 0), dts=(0, 60_000),
               kinds=b"\0\x01", exps=(-1,), mants=(2304,), f32=F32.pack(230.4))
    values = [r.value for r in unseal(envelope(packed(two), 2), None).readings]
    assert values == [230.4, F32.unpack(F32.pack(230.4))[0]]


def zip_bomb() -> bytes:
    compressor = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(64)]      # 64 MiB of zeros
    return b"".join(parts) + compressor.flush()


@pytest.mark.parametrize(("payload", "count", "reason"), [
    (zip_bomb(), 1, "inflates to more than"),
    (zlib.compress(b"\x91" * 100_000 + b"\xc0"), 1, "schema"),            # nested msgpack
    (zlib.compress(b"[" * 100_000 + b"]" * 100_000), 1, "schema"),        # nested JSON
    (zlib.compress(b'{"readings": []}'), 0, "schema"),                   # JSON, not msgpack
    (zlib.compress(b"\xdd\xff\xff\xff\xff"), 1, "schema"),                # huge array header
    (zlib.compress(msgspec.msgpack.encode({"points": []})), 0, "schema"),
    (packed(body()[:-1]), 1, "schema"),
    (packed([*body(), b""]), 1, "schema"),
    (packed([None, "P1", *body()[2:]]), 1, "schema"),
    (packed(body(base="T0")), 1, "schema"),
    (packed(body(mants=(1.5,))), 1, "schema"),
    (packed(body(info={"a": {"b": [{"c": [1]}]}})), 1, "schema"),         # 4 deep
    (packed(body(info={"a": b"bytes"})), 1, "schema"),
    (packed(body(info={"": 1})), 1, "key"),
    (packed(body(info={"a": list(range(33))})), 1, "at most 32"),
    (packed(body(info={"x": math.inf})), 1, "finite"),
    (packed(body(info={"x": [[[math.nan]]]})), 1, "finite"),
    (packed(body(info={f"k{i}": "y" * 1000 for i in range(9)})), 1, "larger than 8192"),
    (zlib.compress(b"\x9d" + b"\x81\xa1a" * 100_000 + b"\xc0"), 1, "schema"),  # nested maps
    (packed(body()), 2, "header says 2"),
    (packed(body()) + b"x", 1, "after its zlib stream"),
    (packed(body())[:-3], 1, "truncated"),
    (packed(body(points=("bad code",))), 1, "point code"),
    (packed(body(points=("P1", "P1"))), 1, "more table entries"),
    (packed(body(points=("P1", "P1"), point_ix=(0, 1), period_ix=b"\0\0", quality_ix=(0, 0),
                 dts=(0, 0), kinds=b"\0\0", exps=(0, 0), mants=(1, 1))), 2, "twice"),
    (packed(body(qualities=("BAD",))), 1, "quality"),
    (packed(body(point_ix=(1,))), 1, "outside its table"),
    (packed(body(point_ix=(-1,))), 1, "outside its table"),
    (packed(body(period_ix=b"\x05")), 1, "outside its table"),
    (packed(body(quality_ix=(3,))), 1, "outside its table"),
    (packed(body(kinds=b"\x03")), 1, "kind"),
    (packed(body(exps=())), 1, "exponents"),
    (packed(body(kinds=b"\x01", exps=(), mants=())), 1, "float columns"),
    (packed(body(kinds=b"\x02", exps=(), mants=(), f64=struct.pack(">d", math.inf))), 1,
     "not finite"),
    (packed(body(kinds=b"\x01", exps=(), mants=(), f32=F32.pack(math.nan))), 1, "not finite"),
    (packed(body(exps=(308,), mants=(999_999_999,))), 1, "not finite"),
    (packed(body(exps=(-400,))), 1, "out of range"),
    (packed(body(exps=(400,))), 1, "out of range"),
    (packed(body(mants=(10**9,))), 1, "digits"),
    (packed(body(base=-1)), 1, "base"),
    (packed(body(dts=(2**63,))), 1, "ts"),
    (packed(body(base=TS_MAX, point_ix=(0, 0), period_ix=b"\0\0", quality_ix=(0, 0),
                 dts=(0, 1), kinds=b"\0\0", exps=(0, 0), mants=(1, 1))), 2, "ts"),
])
def test_signed_but_malformed_bodies_are_format_errors(payload: bytes, count: int,
                                                       reason: str) -> None:
    data = envelope(payload, count)
    started = time.perf_counter()
    with pytest.raises(BatchFormatError, match=reason) as caught:
        unseal(data, ED_KEY.public_key())       # the signature verifies; the body is the fault
    assert time.perf_counter() - started < 1.0
    assert "\n" not in str(caught.value)
    assert peek(data).count == count
