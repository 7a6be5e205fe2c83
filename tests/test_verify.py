"""collector._verify: birth messages, certificates, signatures and the chain, and bad input.

Real keys and certificates (provisioning's PKI), real sealed batches (protocol.seal); storage
is a dict-backed fake of the ``Lookups`` seam the verifier is given.
"""

from __future__ import annotations

import datetime as dt
import json
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector._records import GatewayStatus, Quarantined, VerifiedBatch
from collector._verify import QUARANTINE_KEEP, QUARANTINE_KINDS, Verifier
from protocol import ZERO_HASH, Batch, Period, Reading, batch_hash, seal, topic
from provisioning import (
    gateway_common_name,
    make_ca,
    make_client_cert,
    make_gateway_cert,
    make_server_cert,
)

from .conftest import UNIT

GW = "GW0001"
OTHER_GW = "GW0002"
NOW = time.time()
NOW_MS = int(NOW * 1000)
DATA = topic(UNIT, GW, "up", "data")
STATUS = topic(UNIT, GW, "up", "status")
FIXED = struct.Struct(">4sBBBBBQqII32s")   # docs/batch-format.md, offsets 0-64

CA_KEY, CA = make_ca("Kemon test CA")
OTHER_CA_KEY, OTHER_CA = make_ca("Someone else's CA")
KEY, CERT = make_gateway_cert(CA_KEY, CA, UNIT, GW)
KEY_B, CERT_B = make_gateway_cert(CA_KEY, CA, UNIT, OTHER_GW)


def pem(cert: x509.Certificate) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.PEM).decode("ascii")


class FakeLookups:
    """Storage as the verifier sees it: pins and stored batch hashes in dicts."""

    def __init__(self) -> None:
        self.pins: dict[tuple[str, str], str] = {}
        self.hashes: dict[tuple[str, str], dict[int, bytes]] = {}
        self.calls: list[str] = []

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        self.calls.append("pinned_certificate")
        return self.pins.get((unit, gateway))

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        self.calls.append("last_batch")
        stored = self.hashes.get((unit, gateway))
        if not stored:
            return None
        seq = max(stored)
        return seq, stored[seq]

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        self.calls.append("batch_hash")
        return self.hashes.get((unit, gateway), {}).get(seq)

    def keep(self, result: VerifiedBatch | Quarantined) -> VerifiedBatch:
        """Store a verified batch, as the ingest would."""
        assert isinstance(result, VerifiedBatch), result
        if result.chain != "duplicate":
            self.hashes.setdefault((result.unit, result.gateway), {})[result.seq] = result.hash
        return result


class FailingLookups(FakeLookups):
    """A database that is down: every lookup raises."""

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        raise RuntimeError("database is down")

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        raise RuntimeError("database is down")


class ExplodingLookups(FakeLookups):
    """Any lookup at all is a test failure."""

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        raise AssertionError("looked up a certificate")

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        raise AssertionError("looked up the last batch")

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        raise AssertionError("looked up a batch hash")


def readings(n: int = 5, value: float = 100.0) -> tuple[Reading, ...]:
    return tuple(Reading(point=f"P{i % 3}", period=Period.INSTANT, ts=NOW_MS - 60_000 * i,
                         value=value + i) for i in range(n))


def sealed(seq: int, prev: bytes = ZERO_HASH, *, key: Any = KEY, unit: str = UNIT,
           gateway: str = GW, created: int = NOW_MS, value: float = 100.0,
           kind: str = "data") -> bytes:
    batch = Batch(unit=unit, gateway=gateway, seq=seq, prev=prev, kind=kind, created=created,
                  readings=readings(value=value))
    return seal(batch, key)


def chain(n: int, key: Any = KEY) -> list[bytes]:
    out: list[bytes] = []
    prev = ZERO_HASH
    for seq in range(1, n + 1):
        out.append(sealed(seq, prev, key=key))
        prev = batch_hash(out[-1])
    return out


def birth(cert: x509.Certificate | str | None = CERT, **fields: Any) -> bytes:
    doc: dict[str, Any] = {"status": "online", "unit": UNIT, "gateway": GW,
                           "version": "0.1.0", "started": NOW_MS - 5000, "ts": NOW_MS}
    if cert is not None:
        doc["certificate"] = cert if isinstance(cert, str) else pem(cert)
    doc.update(fields)
    return json.dumps(doc).encode()


def verifier(lookups: FakeLookups | None = None, *, clock: float = NOW,
             cas: list[x509.Certificate] | None = None) -> tuple[Verifier, FakeLookups]:
    lk = lookups if lookups is not None else FakeLookups()
    return Verifier(cas if cas is not None else [CA], lk, clock=lambda: clock), lk


def pinned(gateway: str = GW, cert: x509.Certificate = CERT) -> tuple[Verifier, FakeLookups]:
    """A verifier whose storage has pinned ``cert`` for ``gateway``."""
    v, lk = verifier()
    lk.pins[(UNIT, gateway)] = pem(cert)
    return v, lk


def quarantined(result: object, kind: str) -> Quarantined:
    if isinstance(result, tuple):
        assert result[1] is None
        result = result[0]
    assert isinstance(result, Quarantined), result
    assert result.kind == kind, (result.kind, result.reason)
    assert result.reason and "\n" not in result.reason and "\r" not in result.reason
    return result


def resign(signed: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
    return signed + r.to_bytes(32, "big") + s.to_bytes(32, "big")


def with_body(payload: bytes, body: bytes, key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """``payload`` with another body, validly signed (the envelope rebuilt from its layout)."""
    fields = list(FIXED.unpack_from(payload))
    n_unit, n_gateway = fields[4], fields[5]
    names = payload[FIXED.size:FIXED.size + n_unit + n_gateway]
    fields[9] = len(body)
    return resign(FIXED.pack(*fields) + names + body, key)


# --- construction ----------------------------------------------------------------------------

def test_needs_trusted_cas_that_are_cas() -> None:
    with pytest.raises(ValueError, match="at least one trusted CA"):
        Verifier([], FakeLookups())
    with pytest.raises(ValueError, match="not a CA certificate"):
        Verifier([CERT], FakeLookups())


# --- status: births and wills ----------------------------------------------------------------

def test_good_birth_gives_status_and_the_certificate_to_pin() -> None:
    v, lk = verifier()
    record, to_pin = v.status(STATUS, birth())
    assert isinstance(record, GatewayStatus)
    assert (record.unit, record.gateway, record.status) == (UNIT, GW, "online")
    assert record.version == "0.1.0"
    assert record.received == NOW_MS
    assert record.extra == {"started": NOW_MS - 5000, "ts": NOW_MS}
    assert to_pin == pem(CERT) == record.certificate
    # The birth's key is cached: a batch verifies before storage has committed the pin.
    assert v.batch(DATA, sealed(1)).chain == "first"    # type: ignore[union-attr]
    lk.pins[(UNIT, GW)] = to_pin
    again, to_pin_again = v.status(STATUS, birth())
    assert isinstance(again, GatewayStatus) and again.status == "online"
    assert to_pin_again is None


def test_birth_after_restart_with_the_pinned_certificate_pins_nothing() -> None:
    v, _ = pinned()
    record, to_pin = v.status(STATUS, birth())
    assert isinstance(record, GatewayStatus) and to_pin is None


@pytest.mark.parametrize("doc", [
    {"status": "offline", "reason": "connection lost", "connected_at": NOW_MS},
    {"status": "offline", "reason": "stopped", "ts": NOW_MS},
])
def test_will_and_clean_stop_are_offline_statuses(doc: dict[str, Any]) -> None:
    v, _ = verifier(ExplodingLookups())
    record, to_pin = v.status(STATUS, json.dumps(doc).encode())
    assert isinstance(record, GatewayStatus)
    assert (record.status, record.certificate, to_pin) == ("offline", None, None)
    assert record.extra["reason"] == doc["reason"]


def _expired() -> x509.Certificate:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    return make_client_cert(CA_KEY, CA, gateway_common_name(UNIT, GW), not_before=start,
                            not_after=start + dt.timedelta(days=1))[1]


def _not_yet_valid() -> x509.Certificate:
    start = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    return make_client_cert(CA_KEY, CA, gateway_common_name(UNIT, GW), not_before=start,
                            not_after=start + dt.timedelta(days=10))[1]


def _custom(cn: str, usage: x509.ObjectIdentifier | None,
            ca: bool = False) -> x509.Certificate:
    """A certificate from the trusted CA with a chosen CN and extended key usage."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
               .issuer_name(CA.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1))
               .not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(CA_KEY, hashes.SHA256())


def _san(uri: str) -> x509.Certificate:
    return make_client_cert(CA_KEY, CA, gateway_common_name(UNIT, GW), uris=[uri])[1]


BAD_CERTIFICATES: list[tuple[str, Callable[[], x509.Certificate | str], str, str]] = [
    ("another CA", lambda: make_gateway_cert(OTHER_CA_KEY, OTHER_CA, UNIT, GW)[1],
     "certificate", "not issued by a trusted CA"),
    ("self-signed", lambda: make_ca(f"{UNIT}/{GW}")[1], "certificate",
     "not issued by a trusted CA"),
    ("expired", _expired, "certificate", "valid from"),
    ("not yet valid", _not_yet_valid, "certificate", "valid from"),
    ("another gateway", lambda: CERT_B, "identity", f"names {UNIT}/{OTHER_GW}"),
    ("a server certificate", lambda: make_server_cert(CA_KEY, CA, ["broker.example"])[1],
     "certificate", "not a client certificate"),
    ("serverAuth with the gateway's CN",
     lambda: _custom(f"{UNIT}/{GW}", ExtendedKeyUsageOID.SERVER_AUTH), "certificate",
     "not a client certificate"),
    ("no extended key usage", lambda: _custom(f"{UNIT}/{GW}", None), "certificate",
     "no extended key usage"),
    ("a CA certificate", lambda: _custom(f"{UNIT}/{GW}", ExtendedKeyUsageOID.CLIENT_AUTH,
                                         ca=True), "certificate", "CA certificate"),
    ("a collector's", lambda: _custom("collector-prov", ExtendedKeyUsageOID.CLIENT_AUTH),
     "identity", "names no gateway"),
    ("SAN naming another gateway", lambda: _san(f"urn:kemon:gateway:{UNIT}:{OTHER_GW}"),
     "identity", "also names"),
    ("garbage PEM", lambda: "-----BEGIN CERTIFICATE-----\nnot base64!\n"
                            "-----END CERTIFICATE-----\n", "certificate", "no readable PEM"),
    ("not PEM at all", lambda: "hello", "certificate", "no readable PEM"),
    ("PEM of a key", lambda: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
     "certificate", "no readable PEM"),
]


@pytest.mark.parametrize(("case", "make", "kind", "words"), BAD_CERTIFICATES,
                         ids=[c[0] for c in BAD_CERTIFICATES])
def test_birth_with_a_bad_certificate_is_quarantined(case: str, make: Any, kind: str,
                                                     words: str) -> None:
    v, _ = verifier()
    q = quarantined(v.status(STATUS, birth(make())), kind)
    assert words in q.reason
    assert (q.unit, q.gateway, q.topic) == (UNIT, GW, STATUS)
    # Nothing was pinned or cached: a batch is still waiting for a good birth.
    assert "waiting for its birth" in quarantined(v.batch(DATA, sealed(1)), "certificate").reason


def test_expired_by_the_collector_clock() -> None:
    v, _ = verifier(clock=NOW + 900 * 86_400)
    assert "valid from" in quarantined(v.status(STATUS, birth()), "certificate").reason


def test_expired_trusted_ca() -> None:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    old_key, old_ca = make_ca("old CA", not_before=start, not_after=start + dt.timedelta(days=5))
    cert = make_client_cert(old_key, old_ca, gateway_common_name(UNIT, GW),
                            not_before=start, not_after=start + dt.timedelta(days=400))[1]
    v, _ = verifier(cas=[old_ca])
    assert "issuing CA" in quarantined(v.status(STATUS, birth(cert)), "certificate").reason


def test_any_of_several_trusted_cas() -> None:
    cert = make_gateway_cert(OTHER_CA_KEY, OTHER_CA, UNIT, GW)[1]
    v, _ = verifier(cas=[CA, OTHER_CA])
    record, to_pin = v.status(STATUS, birth(cert))
    assert isinstance(record, GatewayStatus) and to_pin == pem(cert)


NESTED = b'{"status":"online","x":' + b"[" * 30_000 + b"]" * 30_000 + b"}"
BAD_STATUS: list[tuple[str, bytes, str, str]] = [
    ("empty", b"", "format", "empty payload"),
    ("huge", b'{"status":"online","pad":"' + b"x" * 70_000 + b'"}', "size", "larger than"),
    ("deeply nested", NESTED, "format", "status message"),
    ("4 containers deep", b'{"status":"online","x":[[[[1]]]]}', "format", "status message"),
    ("a list", b'["online"]', "format", "status message"),
    ("a string", b'"online"', "format", "status message"),
    ("a number", b"1", "format", "status message"),
    ("null", b"null", "format", "status message"),
    ("not JSON", b"online", "format", "malformed"),
    ("truncated", birth()[:-5], "format", "status message"),
    ("not UTF-8", b'{"status":"\xff\xfe"}', "format", "status message"),
    ("NaN", b'{"status":"online","x":NaN}', "format", "status message"),
    ("no status", b'{"unit":"x"}', "format", "neither"),
    ("unknown status", b'{"status":"sleeping"}', "format", "'sleeping'"),
    ("status not text", b'{"status":["online"]}', "format", "neither"),
    ("another unit", birth(unit="91350100M000100Y43"), "identity", "topic names unit"),
    ("another gateway", birth(gateway=OTHER_GW), "identity", "topic names gateway"),
    ("gateway not text", birth(gateway=1), "identity", "topic names gateway"),
    ("version not text", birth(version=[1, 2]), "format", "version"),
    ("version too long", birth(version="v" * 65), "format", "version"),
    ("no certificate", birth(None), "certificate", "carries no certificate"),
    ("certificate not text", birth(None, certificate={"pem": "x"}), "certificate",
     "carries no certificate"),
    ("empty certificate", birth(""), "certificate", "carries no certificate"),
]


@pytest.mark.parametrize(("case", "payload", "kind", "words"), BAD_STATUS,
                         ids=[c[0] for c in BAD_STATUS])
def test_bad_status_messages_are_quarantined(case: str, payload: bytes, kind: str,
                                             words: str) -> None:
    v, _ = verifier()
    q = quarantined(v.status(STATUS, payload), kind)
    assert words in q.reason
    assert q.payload == payload[:QUARANTINE_KEEP]


@pytest.mark.parametrize("where", [
    DATA,
    topic(UNIT, GW, "down", "status"),
    f"kemon/v1/{UNIT}/{GW}/up/status/extra",
    "kemon/v1/+/+/up/status",
    "",
])
def test_status_on_a_wrong_topic(where: str) -> None:
    v, _ = verifier()
    quarantined(v.status(where, birth()), "format")


def test_status_payload_of_the_wrong_type() -> None:
    v, _ = verifier()
    assert "must be bytes" in quarantined(v.status(STATUS, "{}"), "format").reason  # type: ignore[arg-type]


# --- re-keying -------------------------------------------------------------------------------

def _renewed(days_ago: float) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    return make_client_cert(CA_KEY, CA, gateway_common_name(UNIT, GW), not_before=start,
                            not_after=start + dt.timedelta(days=825),
                            uris=[f"urn:kemon:gateway:{UNIT}:{GW}"])


def test_renewed_certificate_is_pinned_and_the_old_key_still_verifies_old_batches() -> None:
    old_key, old_cert = _renewed(days_ago=400)
    new_key, new_cert = _renewed(days_ago=0.5)
    v, lk = pinned(cert=old_cert)
    b1 = sealed(1, key=old_key)
    assert lk.keep(v.batch(DATA, b1)).chain == "first"
    record, to_pin = v.status(STATUS, birth(new_cert))
    assert isinstance(record, GatewayStatus) and to_pin == pem(new_cert)
    lk.pins[(UNIT, GW)] = to_pin
    b2 = sealed(2, batch_hash(b1), key=new_key)
    assert lk.keep(v.batch(DATA, b2)).chain == "ok"
    # Sealed before the re-key, delivered after it (an outbox backlog, a resend by seq).
    b3 = sealed(3, batch_hash(b2), key=old_key)
    assert lk.keep(v.batch(DATA, b3)).chain == "ok"


def test_older_certificate_than_the_pinned_one_is_refused_as_a_rollback() -> None:
    old_key, old_cert = _renewed(days_ago=400)
    _, new_cert = _renewed(days_ago=0.5)
    v, lk = pinned(cert=new_cert)
    q = quarantined(v.status(STATUS, birth(old_cert)), "certificate")
    assert "rollback" in q.reason
    assert lk.pins[(UNIT, GW)] == pem(new_cert)
    quarantined(v.batch(DATA, sealed(1, key=old_key)), "signature")


def test_a_pin_made_by_another_collector_process_is_picked_up() -> None:
    """Two processes on the shared subscription: one sees the birth, the other the batches."""
    old_key, old_cert = _renewed(days_ago=400)
    new_key, new_cert = _renewed(days_ago=0.5)
    lk = FakeLookups()
    lk.pins[(UNIT, GW)] = pem(old_cert)
    first, _ = verifier(lk)
    second, _ = verifier(lk)
    b1 = sealed(1, key=old_key)
    assert lk.keep(second.batch(DATA, b1)).chain == "first"      # caches the old key
    _, to_pin = first.status(STATUS, birth(new_cert))
    assert to_pin is not None
    lk.pins[(UNIT, GW)] = to_pin
    b2 = sealed(2, batch_hash(b1), key=new_key)
    assert lk.keep(second.batch(DATA, b2)).chain == "ok"


def test_pinned_certificate_of_a_ca_no_longer_trusted_is_not_used() -> None:
    lk = FakeLookups()
    lk.pins[(UNIT, GW)] = pem(CERT)
    v, _ = verifier(lk, cas=[OTHER_CA])
    assert "waiting for its birth" in quarantined(v.batch(DATA, sealed(1)), "certificate").reason


def test_unreadable_pin_in_storage_counts_as_none() -> None:
    v, lk = verifier()
    lk.pins[(UNIT, GW)] = "garbage"
    quarantined(v.batch(DATA, sealed(1)), "certificate")
    record, to_pin = v.status(STATUS, birth())
    assert isinstance(record, GatewayStatus) and to_pin == pem(CERT)


def test_keys_are_cached_per_gateway() -> None:
    v, lk = pinned()
    for b in chain(3):
        lk.keep(v.batch(DATA, b))
    assert lk.calls.count("pinned_certificate") == 1


# --- the chain -------------------------------------------------------------------------------

def test_chain_first_then_ok() -> None:
    v, lk = pinned()
    b = chain(3)
    results = [lk.keep(v.batch(DATA, x)) for x in b]
    assert [r.chain for r in results] == ["first", "ok", "ok"]
    assert [r.seq for r in results] == [1, 2, 3]
    assert [r.payload for r in results] == b
    r = results[1]
    assert r.hash == batch_hash(r.payload)
    assert (r.unit, r.gateway, r.received, r.via) == (UNIT, GW, NOW_MS, ())
    assert r.batch.readings == readings()


def test_duplicate_is_verified_and_marked() -> None:
    v, lk = pinned()
    b = chain(2)
    lk.keep(v.batch(DATA, b[0]))
    lk.keep(v.batch(DATA, b[1]))
    again = v.batch(DATA, b[1])
    assert isinstance(again, VerifiedBatch) and again.chain == "duplicate"
    assert again.hash == batch_hash(b[1])


def test_replay_of_an_old_batch_is_a_duplicate_stored_once() -> None:
    v, lk = pinned()
    b = chain(3)
    for x in b:
        lk.keep(v.batch(DATA, x))
    replay = v.batch(DATA, b[0])
    assert isinstance(replay, VerifiedBatch) and replay.chain == "duplicate"
    assert len(lk.hashes[(UNIT, GW)]) == 3


def test_same_seq_other_bytes_is_a_conflict() -> None:
    v, lk = pinned()
    b = chain(2)
    lk.keep(v.batch(DATA, b[0]))
    lk.keep(v.batch(DATA, b[1]))
    other = sealed(2, batch_hash(b[0]), value=999.0)       # validly signed, other readings
    q = quarantined(v.batch(DATA, other), "conflict")
    assert "already stored" in q.reason and q.seq == 2
    # ECDSA is randomised: the same batch sealed twice is two different byte strings.
    resealed = sealed(2, batch_hash(b[0]))
    assert resealed != b[1]
    quarantined(v.batch(DATA, resealed), "conflict")


def test_gap_then_fill() -> None:
    v, lk = pinned()
    b = chain(4)
    assert lk.keep(v.batch(DATA, b[0])).chain == "first"
    assert lk.keep(v.batch(DATA, b[2])).chain == "after_gap"
    assert lk.keep(v.batch(DATA, b[3])).chain == "ok"
    assert lk.keep(v.batch(DATA, b[1])).chain == "ok"        # the resent batch 2


def test_first_batch_seen_need_not_be_seq_1() -> None:
    v, lk = pinned()
    b = chain(5)
    assert lk.keep(v.batch(DATA, b[4])).chain == "first"
    assert lk.keep(v.batch(DATA, b[2])).chain == "after_gap"


def test_prev_that_does_not_match_is_a_chain_break() -> None:
    v, lk = pinned()
    b = chain(2)
    lk.keep(v.batch(DATA, b[0]))
    q = quarantined(v.batch(DATA, sealed(2, b"\x01" * 32)), "chain")
    assert "prev does not match batch 1" in q.reason


def test_batch_1_must_start_the_chain() -> None:
    v, _ = pinned()
    assert "zero prev" in quarantined(v.batch(DATA, sealed(1, b"\x07" * 32)), "chain").reason


def test_created_far_in_the_future_is_accepted_with_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    v, lk = pinned()
    b = sealed(1, created=NOW_MS + 3 * 86_400_000)
    assert lk.keep(v.batch(DATA, b)).chain == "first"
    assert "more than a day ahead" in caplog.text


# --- identity and signatures -----------------------------------------------------------------

def test_no_birth_yet() -> None:
    v, _ = verifier()
    b = sealed(1)
    q = quarantined(v.batch(DATA, b), "certificate")
    assert q.reason == f"no certificate known for {UNIT}/{GW}: waiting for its birth message"
    assert (q.unit, q.gateway, q.seq, q.received) == (UNIT, GW, 1, NOW_MS)
    assert q.payload == b


def test_another_gateways_key_claiming_this_gateway() -> None:
    v, _ = pinned()
    q = quarantined(v.batch(DATA, sealed(1, key=KEY_B)), "signature")
    assert "does not verify" in q.reason


def test_another_gateways_batch_on_this_gateways_topic() -> None:
    v, lk = pinned()
    lk.pins[(UNIT, OTHER_GW)] = pem(CERT_B)
    q = quarantined(v.batch(DATA, sealed(1, key=KEY_B, gateway=OTHER_GW)), "identity")
    assert q.reason == f"topic names {UNIT}/{GW} but the batch {UNIT}/{OTHER_GW}"


def test_this_gateways_batch_on_another_gateways_topic() -> None:
    v, lk = pinned()
    lk.pins[(UNIT, OTHER_GW)] = pem(CERT_B)
    quarantined(v.batch(topic(UNIT, OTHER_GW, "up", "data"), sealed(1)), "identity")


def test_another_unit_in_the_header() -> None:
    v, _ = pinned()
    b = sealed(1, unit="91350100M000100Y43")
    quarantined(v.batch(DATA, b), "identity")


def test_key_from_another_ca_cannot_sign_for_a_pinned_gateway() -> None:
    rogue_key, _ = make_gateway_cert(OTHER_CA_KEY, OTHER_CA, UNIT, GW)
    v, _ = pinned()
    quarantined(v.batch(DATA, sealed(1, key=rogue_key)), "signature")


def test_every_tampered_byte_is_refused() -> None:
    v, _ = pinned()
    good = sealed(1)
    assert isinstance(v.batch(DATA, good), VerifiedBatch)
    body_at = len(good) - 64 - FIXED.unpack_from(good)[9]
    for at in range(len(good)):
        for flip in (0x01, 0x80):
            bad = bytearray(good)
            bad[at] ^= flip
            result = v.batch(DATA, bytes(bad))
            assert isinstance(result, Quarantined), (at, flip)
            assert result.kind in {"format", "signature", "identity"}, (at, result.reason)
            if at >= body_at or 9 <= at < 29 or 33 <= at < 65:   # body, signature, seq …
                assert result.kind in {"signature", "format"}, (at, result.reason)


def test_signed_body_of_the_wrong_schema_is_a_format_error() -> None:
    v, _ = pinned()
    q = quarantined(v.batch(DATA, with_body(sealed(1), zlib.compress(b"\x93\x01\x02\x03"))),
                    "format")
    assert "batch 1" in q.reason


def test_unsigned_garbage_body_is_a_signature_error_not_inflated() -> None:
    v, _ = pinned()
    bomb = zlib.compress(b"\x00" * 50_000_000)
    forged = with_body(sealed(1), bomb, key=KEY_B)
    quarantined(v.batch(DATA, forged), "signature")


# --- topics and payload shapes ---------------------------------------------------------------

@pytest.mark.parametrize("where", [
    "",
    "kemon/v1",
    "kemon/v2/{u}/{g}/up/data",
    "kemon/v1/{u}/{g}/down/data",
    "kemon/v1/{u}/{g}/up/status",
    "kemon/v1/{u}/{g}/up/batch",
    "kemon/v1/{u}/{g}/up/data/extra",
    "kemon/v1/{u}/{g}/up",
    "kemon/v1/+/{g}/up/data",
    "kemon/v1/{u}/+/up/data",
    "kemon/v1/{u}/#",
    "kemon/v1/91320100MA1ABCDE0X/{g}/up/data",      # wrong check character
    "kemon/v1/{lower}/{g}/up/data",                 # not canonical
    "kemon/v1/{u}/GW 1/up/data",
    "kemon/v1/{u}/{g}/up/data\n",
    "/kemon/v1/{u}/{g}/up/data",
])
def test_wrong_topic_shapes(where: str) -> None:
    v, _ = pinned()
    text = where.format(u=UNIT, g=GW, lower=UNIT.lower())
    q = quarantined(v.batch(text, sealed(1)), "format")
    assert q.topic == text


def test_topic_that_is_not_text() -> None:
    v, _ = pinned()
    quarantined(v.batch(DATA.encode(), sealed(1)), "format")  # type: ignore[arg-type]


@pytest.mark.parametrize(("payload", "words"), [
    (b"", "empty payload"),
    (None, "must be bytes"),
    ("KEMB", "must be bytes"),
    (12, "must be bytes"),
    (b"KEMB", "too short"),
    (b"\x00" * 200, "not a Kemon batch"),
])
def test_empty_and_wrong_payloads(payload: Any, words: str) -> None:
    v, _ = verifier(ExplodingLookups())
    assert words in quarantined(v.batch(DATA, payload), "format").reason


def test_bytearray_and_memoryview_payloads_are_accepted() -> None:
    v, _ = pinned()
    b = sealed(1)
    for form in (bytearray(b), memoryview(b)):
        result = v.batch(DATA, form)  # type: ignore[arg-type]
        assert isinstance(result, VerifiedBatch) and result.payload == b


def test_ten_megabytes_are_refused_by_size_before_anything_else() -> None:
    v, _ = verifier(ExplodingLookups())
    huge = sealed(1) + b"\x00" * 10_000_000
    q = quarantined(v.batch(DATA, huge), "size")     # the lookups would explode if asked
    assert "10000" in q.reason.replace(",", "")
    assert len(q.payload) == QUARANTINE_KEEP and q.payload == huge[:QUARANTINE_KEEP]
    assert q.unit is None and q.seq is None      # not even the topic was parsed


def test_max_payload_is_configurable() -> None:
    v = Verifier([CA], ExplodingLookups(), clock=lambda: NOW, max_payload=100)
    quarantined(v.batch(DATA, sealed(1)), "size")


def test_storage_errors_propagate_instead_of_quarantining() -> None:
    v, _ = verifier(FailingLookups())
    with pytest.raises(RuntimeError, match="database is down"):
        v.batch(DATA, sealed(1))
    with pytest.raises(RuntimeError, match="database is down"):
        v.status(STATUS, birth())


# --- hostile input with hypothesis -----------------------------------------------------------

def _check_never_raises(result: object) -> None:
    assert isinstance(result, Quarantined), result
    assert result.kind in QUARANTINE_KINDS
    assert result.reason.strip() and "\n" not in result.reason
    assert len(result.payload) <= QUARANTINE_KEEP


GOOD = chain(2)
PINNED_V, PINNED_LK = pinned()
PINNED_LK.keep(PINNED_V.batch(DATA, GOOD[0]))
FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=2048))
def test_random_bytes_are_quarantined(payload: bytes) -> None:
    _check_never_raises(PINNED_V.batch(DATA, payload))
    _check_never_raises(PINNED_V.status(STATUS, payload)[0])


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_behind_a_valid_header_are_quarantined(tail: bytes) -> None:
    _check_never_raises(PINNED_V.batch(DATA, GOOD[1][:65] + tail))


@FAST
@given(st.lists(st.tuples(st.integers(0, len(GOOD[1]) - 1), st.integers(0, 255)),
                min_size=1, max_size=8),
       st.sampled_from(["replace", "truncate", "extend", "insert"]))
def test_mutated_batches_are_quarantined(edits: list[tuple[int, int]], how: str) -> None:
    bad = bytearray(GOOD[1])
    for at, value in edits:
        if how == "replace":
            bad[at] = value if value != bad[at] else value ^ 0xFF
        elif how == "truncate":
            del bad[at:]
            break
        elif how == "extend":
            bad.append(value)
        else:
            bad.insert(at, value)
    if bytes(bad) == GOOD[1]:
        return
    _check_never_raises(PINNED_V.batch(DATA, bytes(bad)))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@FAST
@given(JSON)
def test_random_json_status_never_raises(doc: Any) -> None:
    record, to_pin = PINNED_V.status(STATUS, json.dumps(doc).encode())
    if isinstance(record, Quarantined):
        _check_never_raises(record)
        assert to_pin is None
    else:
        assert record.status == "offline" and to_pin is None


@FAST
@given(st.dictionaries(st.sampled_from(["status", "unit", "gateway", "version",
                                        "certificate", "x"]), JSON, max_size=6))
def test_random_status_objects_never_raise(doc: dict[str, Any]) -> None:
    record, _ = PINNED_V.status(STATUS, json.dumps(doc).encode())
    if isinstance(record, Quarantined):
        _check_never_raises(record)
    else:
        assert record.status == "offline"


@FAST
@given(st.text(max_size=80))
def test_random_topics_never_raise(where: str) -> None:
    result = PINNED_V.batch(where, GOOD[1])
    if isinstance(result, VerifiedBatch):
        assert where == DATA
    else:
        _check_never_raises(result)
