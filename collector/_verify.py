"""Verification of everything a collector receives: pure checks, cheapest first.

:class:`Verifier` turns one MQTT message into a record for storage (``collector._records``):

* ``up/status`` → :meth:`Verifier.status` → a ``GatewayStatus`` (plus the certificate PEM to
  pin, when there is one to pin) or a ``Quarantined``;
* ``up/data`` → :meth:`Verifier.batch` → a ``VerifiedBatch`` or a ``Quarantined``.

Bad input never raises: every failure is a ``Quarantined`` with a one-line ``reason`` and a
``kind`` (:data:`QUARANTINE_KINDS`): ``size``, ``format``, ``identity``, ``certificate``,
``signature``, ``conflict``, ``chain``. Exceptions raised by the :class:`Lookups` (the storage
layer: a database that is down) propagate unchanged, so the ingest does not acknowledge a
message it could not judge.

Checks on a batch, in order (each one cheaper than the next, so junk costs little)::

    size        at most ``max_payload`` bytes (default 1,000,000: protocol.MAX_SEALED_BYTES),
                before anything is parsed; empty is ``format``
    topic       kemon/v1/{unit}/{gateway}/up/data (protocol.parse_topic)
    header      protocol.peek: magic, version, lengths, names, seq 1 … 2**63-1 (so a seq ≤ 0
                cannot get past here), created, count
    identity    the header's unit/gateway are the topic's (the broker's ACL ties the topic to
                the client certificate's CN; the header ties the signed bytes to it)
    certificate a certificate pinned for that gateway (from its birth message), else
                ``certificate``: "no certificate known …: waiting for its birth message"
    signature   protocol.unseal_columns with the pinned key (checked before the body is
                inflated; the readings stay columns: what storage writes)
    chain       by seq and SHA-256 of the sealed bytes, against what storage holds:
                  seq stored, same hash        → VerifiedBatch chain="duplicate"
                  seq stored, other hash       → Quarantined "conflict"
                  seq 1                        → "first" (prev must be zero, else "chain")
                  seq-1 stored, prev matches   → "ok"
                  seq-1 stored, prev differs   → Quarantined "chain"
                  seq-1 not stored             → "after_gap" ("first" when nothing at all is
                                                 stored for this gateway yet)

Decisions:

* **Duplicates** are normal (a reconnect, a crash before PUBACK, a resend request, a relay and
  the gateway both delivering): they come back as ``VerifiedBatch(chain="duplicate")`` so the
  ingest acknowledges them without storing anything. They are verified like any batch (a
  duplicate is byte-identical to a batch that verified, so this costs time, never a verdict).
  An *exact* replay of an old batch by anyone is therefore a harmless duplicate; a batch that
  reuses a stored seq with other bytes (validly signed: a gateway whose store was reset, or a
  stolen key) is a ``conflict`` and is never stored over the first.
* **Re-keying.** Certificates get renewed (825 days at most, provisioning.LEAF_DAYS). A birth
  presenting a certificate other than the pinned one is accepted — and returned for pinning in
  place of the old one — when it passes every check a first birth passes (issued by a trusted
  CA, valid now, a client certificate, naming exactly this unit/gateway, a key batches can be
  verified with) **and** it is not older than the pinned one (its notBefore is not earlier):
  the CA vouches for the identity, and the age rule refuses a rollback to a superseded
  certificate whose key may have been retired because it leaked. A certificate refused that way
  is quarantined (``certificate``) and the pin stays. Batches sealed with the previous key are
  still in gateway outboxes and histories (resend by seq returns the stored bytes), so the
  verifier keeps up to :data:`PREVIOUS_KEYS` earlier keys per gateway in its cache and tries
  them after the current one. Storage pins one certificate, so after a restart only the current
  key is known: a batch sealed before a re-key and delivered after a restart is quarantined as
  ``signature`` (kept, can be re-checked by hand). With several collector processes one of them
  may pin a new certificate while another holds the old key: a batch whose signature fails with
  every cached key makes the verifier read the pin again and retry with it when it changed.
* **Pinned certificates are re-checked when loaded** from storage (issued by a trusted CA,
  naming that gateway), so removing a CA from the configuration stops trusting what it issued;
  their validity period is not checked then: a batch delivered after an outage, or resent from
  history, was sealed while the certificate was valid. Revocation is the broker's job (its CRL
  at the TLS handshake).
* **Future timestamps.** A batch ``created`` more than :data:`FUTURE_LIMIT_MS` (1 day) after
  the collector's clock is *accepted* and logged as a warning. It is signed and in its place in
  the chain; refusing it would leave a hole the chain reports on every following batch, and the
  resend it triggers would bring the same bytes again, forever. A wrong gateway clock is a data
  quality matter for the platform, not an authenticity one.
* **Status messages** are JSON objects of at most :data:`MAX_STATUS_BYTES` (64 KiB), nested at
  most 3 containers deep below the top (the decoder's schema stops at that depth, so a deeply
  nested document fails at its 4th bracket without recursion); ``status`` is ``online`` or
  ``offline``; ``unit``/``gateway``, when present, must be the topic's; ``version`` is text.
  A birth (``online``) must carry its certificate; other keys go to ``GatewayStatus.extra``.

The verifier keeps the parsed keys of recently seen gateways in an LRU cache
(``cache_size`` gateways). It is not thread-safe: one per ingest loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import msgspec
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from protocol import (
    MAX_SEALED_BYTES,
    ZERO_HASH,
    BatchFormatError,
    BatchHeader,
    BatchSignatureError,
    ColumnBatch,
    Topic,
    batch_hash,
    parse_topic,
    peek,
    unseal_columns,
)
from provisioning import URN_PREFIX, IdentityError, gateway_identity

from ._records import GatewayStatus, Quarantined, VerifiedBatch

__all__ = [
    "FUTURE_LIMIT_MS",
    "MAX_STATUS_BYTES",
    "PREVIOUS_KEYS",
    "QUARANTINE_KEEP",
    "QUARANTINE_KINDS",
    "Lookups",
    "Verifier",
]

log = logging.getLogger(__name__)

QUARANTINE_KINDS = ("size", "format", "identity", "certificate", "signature", "conflict",
                    "chain")
QUARANTINE_KEEP = 64 * 1024          # bytes of a refused payload kept for inspection
MAX_STATUS_BYTES = 64 * 1024         # a birth is ~1 kB, most of it the certificate's PEM
FUTURE_LIMIT_MS = 86_400_000         # 1 day: "created" later than this ahead is logged
PREVIOUS_KEYS = 3                    # earlier keys of a re-keyed gateway kept in the cache
_MAX_VERSION = 64
_MAX_REASON = 400
_STATUSES = ("online", "offline")
_KNOWN_STATUS_KEYS = frozenset({"status", "unit", "gateway", "version", "certificate"})
_WHITESPACE = re.compile(r"\s+")

# The status document: an object whose values nest at most 3 containers deep (msgspec allows
# one list type and one map type in a union, so the depth is spelled out level by level).
_Scalar = str | int | float | bool | None
_Level1 = _Scalar | list[_Scalar] | dict[str, _Scalar]
_Level2 = _Scalar | list[_Level1] | dict[str, _Level1]
_Level3 = _Scalar | list[_Level2] | dict[str, _Level2]
_STATUS_DECODER = msgspec.json.Decoder(dict[str, _Level3])

_T = TypeVar("_T")
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


class Lookups(Protocol):
    """What the verifier asks storage (implemented by the storage layer)."""

    def pinned_certificate(self, unit: str, gateway: str) -> str | None:
        """The PEM pinned for this gateway, or ``None`` before its first birth."""

    def last_batch(self, unit: str, gateway: str) -> tuple[int, bytes] | None:
        """The highest stored ``(seq, hash)`` of this gateway, or ``None``."""

    def batch_hash(self, unit: str, gateway: str, seq: int) -> bytes | None:
        """The hash of the stored batch ``seq`` of this gateway, or ``None``."""


class _Reject(Exception):
    """A verdict: quarantine with this kind and reason."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


class _LookupFailure(Exception):
    """Wraps an exception raised by the lookups, so that it is re-raised, not quarantined."""

    def __init__(self, original: Exception) -> None:
        super().__init__(str(original))
        self.original = original


@dataclass
class _Context:
    """What is known about a message so far (for the Quarantined record)."""

    topic: str
    unit: str | None = None
    gateway: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class _Pin:
    """A gateway's certificate as the verifier uses it."""

    der: bytes
    pem: str
    not_before: dt.datetime
    key: PublicKey


@dataclass(slots=True)
class _Known:
    """The cache entry of one gateway: the current pin and earlier keys (newest first)."""

    current: _Pin
    previous: tuple[PublicKey, ...] = ()

    def keys(self) -> tuple[PublicKey, ...]:
        return (self.current.key, *self.previous)

    def replace(self, pin: _Pin) -> None:
        if pin.der == self.current.der:
            return
        earlier = (self.current.key, *self.previous)
        self.previous = tuple(k for k in earlier if k != pin.key)[:PREVIOUS_KEYS]
        self.current = pin


class Verifier:
    """Checks status messages and sealed batches (see the module docstring for the rules).

    ``trusted_cas``: the CA certificates gateway certificates must be issued by (directly: the
    Kemon CA issues leaves only). ``clock``: seconds since the epoch. ``max_payload``: the
    largest batch payload accepted.
    """

    def __init__(self, trusted_cas: Sequence[x509.Certificate], lookups: Lookups, *,
                 clock: Callable[[], float] = time.time,
                 max_payload: int = MAX_SEALED_BYTES, cache_size: int = 65_536) -> None:
        cas = list(trusted_cas)
        if not cas:
            raise ValueError("at least one trusted CA certificate is needed")
        for ca in cas:
            try:
                constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
            except x509.ExtensionNotFound:
                constraints = None
            if constraints is None or not constraints.ca:
                raise ValueError(f"{ca.subject.rfc4514_string()} is not a CA certificate "
                                 "(basicConstraints CA:TRUE)")
        if max_payload < 1:
            raise ValueError(f"max_payload must be positive, not {max_payload}")
        if cache_size < 1:
            raise ValueError(f"cache_size must be positive, not {cache_size}")
        self._cas = cas
        self._lookups = lookups
        self._clock = clock
        self._max_payload = max_payload
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], _Known] = OrderedDict()

    # --- status ----------------------------------------------------------------------------

    def status(self, topic: str, payload: bytes,
               ) -> tuple[GatewayStatus | Quarantined, str | None]:
        """An ``up/status`` message → (record, PEM to pin or ``None``).

        A PEM comes back when the birth's certificate is not the one pinned (a first birth,
        or an accepted re-key): storage pins it for the gateway, replacing any earlier pin.
        """
        received = self._now_ms()
        ctx = _Context(topic=topic if isinstance(topic, str) else repr(topic))
        try:
            return self._status(topic, payload, ctx, received)
        except _Reject as verdict:
            return self._quarantine(ctx, payload, received, verdict), None
        except _LookupFailure as failure:
            raise failure.original from None
        except Exception as exc:     # a bug, not a verdict: keep the message, say so
            log.exception("status message on %r could not be checked", ctx.topic)
            return self._quarantine(ctx, payload, received, _unexpected(exc)), None

    def _status(self, topic: str, payload: bytes, ctx: _Context, received: int,
                ) -> tuple[GatewayStatus, str | None]:
        data = _payload_bytes(payload, MAX_STATUS_BYTES, "a status message")
        where = _topic(topic, "status", ctx)
        try:
            doc = _STATUS_DECODER.decode(data)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            raise _Reject("format", f"status message: {_why(exc)}") from None
        status = doc.get("status")
        if status not in _STATUSES:
            raise _Reject("format", f"status {status!r} is neither 'online' nor 'offline'")
        for key, expected in (("unit", where.unit), ("gateway", where.gateway)):
            if key in doc and doc[key] != expected:
                raise _Reject("identity", f"topic names {key} {expected!r} but the status "
                              f"message {doc[key]!r}")
        version = doc.get("version")
        if version is not None and (not isinstance(version, str)
                                    or len(version) > _MAX_VERSION):
            raise _Reject("format", f"version {version!r} is not text of at most "
                          f"{_MAX_VERSION} characters")
        extra: dict[str, object] = {k: v for k, v in doc.items()
                                    if k not in _KNOWN_STATUS_KEYS}
        record = GatewayStatus(unit=where.unit, gateway=where.gateway, status=str(status),
                               received=received, version=version, extra=extra)
        if status == "offline":
            return record, None
        pem = doc.get("certificate")
        if not isinstance(pem, str) or not pem:
            raise _Reject("certificate", f"the birth message of {where.unit}/{where.gateway} "
                          "carries no certificate (PEM text)")
        pin = self._check_birth_certificate(pem, where.unit, where.gateway, received)
        record = GatewayStatus(unit=record.unit, gateway=record.gateway, status=record.status,
                               received=received, version=version, certificate=pin.pem,
                               extra=extra)
        return record, self._repin(where.unit, where.gateway, pin)

    def _check_birth_certificate(self, pem: str, unit: str, gateway: str,
                                 received: int) -> _Pin:
        try:
            cert = x509.load_pem_x509_certificate(pem.encode("utf-8"))
        except ValueError as exc:
            raise _Reject("certificate", f"the birth message of {unit}/{gateway} carries no "
                          f"readable PEM certificate: {_why(exc)}") from None
        now = dt.datetime.fromtimestamp(received / 1000, dt.UTC)
        return self._check_certificate(cert, unit, gateway, at=now)

    def _repin(self, unit: str, gateway: str, pin: _Pin) -> str | None:
        """Compare with the pinned certificate; the PEM to pin, or None when unchanged."""
        pinned_pem = self._lookup(self._lookups.pinned_certificate, unit, gateway)
        pinned = _read_pin(pinned_pem, unit, gateway) if pinned_pem is not None else None
        if pinned is not None and pinned.der == pin.der:
            self._remember(unit, gateway, pin)
            return None
        if pinned is not None and pin.not_before < pinned.not_before:
            raise _Reject("certificate", f"{unit}/{gateway} presents a certificate issued "
                          f"{pin.not_before.isoformat()}, older than the pinned one "
                          f"({pinned.not_before.isoformat()}): refused as a rollback")
        if pinned is not None:
            log.info("%s/%s: re-keyed; pinning its new certificate (valid from %s)",
                     unit, gateway, pin.not_before.isoformat())
            old = self._recheck(pinned, unit, gateway)
            if old is not None:      # the old key stays usable for batches sealed with it
                self._remember(unit, gateway, old)
        self._remember(unit, gateway, pin)
        return pin.pem

    # --- batches ---------------------------------------------------------------------------

    def batch(self, topic: str, payload: bytes) -> VerifiedBatch | Quarantined:
        """An ``up/data`` message → a ``VerifiedBatch`` (``chain`` ``ok``, ``first``,
        ``after_gap`` or ``duplicate``) or a ``Quarantined``."""
        received = self._now_ms()
        ctx = _Context(topic=topic if isinstance(topic, str) else repr(topic))
        try:
            return self._batch(topic, payload, ctx, received)
        except _Reject as verdict:
            return self._quarantine(ctx, payload, received, verdict)
        except _LookupFailure as failure:
            raise failure.original from None
        except Exception as exc:     # a bug, not a verdict: keep the message, say so
            log.exception("batch on %r could not be checked", ctx.topic)
            return self._quarantine(ctx, payload, received, _unexpected(exc))

    def _batch(self, topic: str, payload: bytes, ctx: _Context,
               received: int) -> VerifiedBatch:
        data = _payload_bytes(payload, self._max_payload, "a batch")
        where = _topic(topic, "data", ctx)
        try:
            header = peek(data)
        except BatchFormatError as exc:
            raise _Reject("format", str(exc)) from None
        ctx.seq = header.seq
        if (header.unit, header.gateway) != (where.unit, where.gateway):
            raise _Reject("identity", f"topic names {where.unit}/{where.gateway} but the "
                          f"batch {header.unit}/{header.gateway}")
        batch = self._unseal(data, header)
        digest = batch_hash(data)
        chain = self._chain(header, digest)
        if header.created > received + FUTURE_LIMIT_MS:
            log.warning("%s/%s batch %d was created %s, more than a day ahead of this "
                        "collector's clock; accepted (gateway clock wrong?)", header.unit,
                        header.gateway, header.seq,
                        dt.datetime.fromtimestamp(header.created / 1000, dt.UTC).isoformat())
        return VerifiedBatch(batch=batch, payload=data, hash=digest, received=received,
                             chain=chain)

    def _unseal(self, data: bytes, header: BatchHeader) -> ColumnBatch:
        unit, gateway = header.unit, header.gateway
        known = self._known(unit, gateway)
        if known is None:
            raise _Reject("certificate", f"no certificate known for {unit}/{gateway}: "
                          "waiting for its birth message")
        tried = known.keys()
        found = _try_keys(data, tried)
        if found is None:
            # Another collector process may have pinned a new certificate since we cached ours.
            fresh = self._load_pin(unit, gateway)
            if fresh is not None and fresh.key not in tried:
                found = _try_keys(data, (fresh.key,))
                if found is not None:
                    self._remember(unit, gateway, fresh)
        if found is None:
            raise _Reject("signature", f"batch {header.seq}: the signature does not verify "
                          f"with the certificate pinned for {unit}/{gateway}")
        return found

    def _chain(self, header: BatchHeader, digest: bytes) -> str:
        unit, gateway, seq = header.unit, header.gateway, header.seq
        stored = self._lookup(self._lookups.batch_hash, unit, gateway, seq)
        if stored is not None:
            if stored == digest:
                return "duplicate"
            raise _Reject("conflict", f"batch {seq} differs from the batch {seq} already "
                          f"stored for {unit}/{gateway} (same seq, other bytes)")
        if seq == 1:
            if header.prev != ZERO_HASH:
                raise _Reject("chain", "batch 1 must have a zero prev")
            return "first"
        before = self._lookup(self._lookups.batch_hash, unit, gateway, seq - 1)
        if before is None:
            last = self._lookup(self._lookups.last_batch, unit, gateway)
            return "first" if last is None else "after_gap"
        if before != header.prev:
            raise _Reject("chain", f"batch {seq}: prev does not match batch {seq - 1}")
        return "ok"

    # --- certificates and the cache --------------------------------------------------------

    def _known(self, unit: str, gateway: str) -> _Known | None:
        known = self._cache.get((unit, gateway))
        if known is not None:
            self._cache.move_to_end((unit, gateway))
            return known
        pin = self._load_pin(unit, gateway)
        if pin is None:
            return None
        self._remember(unit, gateway, pin)
        return self._cache[(unit, gateway)]

    def _load_pin(self, unit: str, gateway: str) -> _Pin | None:
        """The pinned certificate from storage, re-checked (issuer, identity; not dates)."""
        pem = self._lookup(self._lookups.pinned_certificate, unit, gateway)
        if pem is None:
            return None
        pin = _read_pin(pem, unit, gateway)
        return self._recheck(pin, unit, gateway) if pin is not None else None

    def _recheck(self, pin: _Pin, unit: str, gateway: str) -> _Pin | None:
        """A pin read from storage, if it is still issued by a trusted CA to that gateway."""
        try:
            return self._check_certificate(x509.load_der_x509_certificate(pin.der), unit,
                                           gateway, at=None)
        except _Reject as verdict:
            log.warning("%s/%s: the pinned certificate is no longer trusted: %s", unit,
                        gateway, verdict.reason)
            return None

    def _remember(self, unit: str, gateway: str, pin: _Pin) -> None:
        known = self._cache.get((unit, gateway))
        if known is None:
            self._cache[(unit, gateway)] = _Known(current=pin)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            known.replace(pin)
            self._cache.move_to_end((unit, gateway))

    def _check_certificate(self, cert: x509.Certificate, unit: str, gateway: str, *,
                           at: dt.datetime | None) -> _Pin:
        """Issued by a trusted CA, valid ``at`` (unless None), a client certificate naming
        exactly ``unit``/``gateway``, with a key batches can be verified with."""
        name = f"{unit}/{gateway}"
        issuer = self._issuer(cert)
        if issuer is None:
            raise _Reject("certificate", f"the certificate of {name} is not issued by a "
                          f"trusted CA (issuer {cert.issuer.rfc4514_string()!r})")
        if at is not None:
            for what, c in (("certificate", cert), ("issuing CA", issuer)):
                if not c.not_valid_before_utc <= at <= c.not_valid_after_utc:
                    raise _Reject("certificate", f"the {what} of {name} is valid from "
                                  f"{c.not_valid_before_utc.isoformat()} to "
                                  f"{c.not_valid_after_utc.isoformat()}, not now "
                                  f"({at.isoformat()})")
        _check_client_usage(cert, name)
        try:
            named = gateway_identity(cert)
        except IdentityError as exc:
            raise _Reject("identity", f"the certificate presented for {name} names no "
                          f"gateway: {exc}") from None
        if named != (unit, gateway):
            raise _Reject("identity", f"the certificate presented for {name} names "
                          f"{named[0]}/{named[1]}")
        _check_san(cert, unit, gateway)
        key = cert.public_key()
        if not (isinstance(key, ed25519.Ed25519PublicKey)
                or (isinstance(key, ec.EllipticCurvePublicKey)
                    and isinstance(key.curve, ec.SECP256R1))):
            raise _Reject("certificate", f"the certificate of {name} holds a "
                          f"{type(key).__name__} key; batches are signed with ECDSA P-256 "
                          "or Ed25519")
        return _Pin(der=cert.public_bytes(serialization.Encoding.DER),
                    pem=cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                    not_before=cert.not_valid_before_utc, key=key)

    def _issuer(self, cert: x509.Certificate) -> x509.Certificate | None:
        for ca in self._cas:
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return ca
        return None

    # --- helpers ---------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    @staticmethod
    def _lookup(call: Callable[..., _T], *args: object) -> _T:
        try:
            return call(*args)
        except Exception as exc:
            raise _LookupFailure(exc) from exc

    @staticmethod
    def _quarantine(ctx: _Context, payload: object, received: int,
                    verdict: _Reject) -> Quarantined:
        kept = bytes(payload[:QUARANTINE_KEEP]) \
            if isinstance(payload, bytes | bytearray | memoryview) else b""
        return Quarantined(topic=ctx.topic, reason=_one_line(verdict.reason),
                           kind=verdict.kind, payload=kept, received=received,
                           unit=ctx.unit, gateway=ctx.gateway, seq=ctx.seq)


# --- pure helpers ---------------------------------------------------------------------------

def _payload_bytes(payload: object, limit: int, what: str) -> bytes:
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise _Reject("format", f"{what} payload must be bytes, not {type(payload).__name__}")
    size = len(payload) if not isinstance(payload, memoryview) else payload.nbytes
    if size > limit:
        raise _Reject("size", f"{size} bytes: larger than {what} may be ({limit})")
    if size == 0:
        raise _Reject("format", f"empty payload: not {what}")
    return bytes(payload)


def _topic(text: object, kind: str, ctx: _Context) -> Topic:
    if not isinstance(text, str):
        raise _Reject("format", f"topic {text!r} is not text")
    try:
        where = parse_topic(text)
    except ValueError as exc:
        raise _Reject("format", str(exc)) from None
    ctx.unit, ctx.gateway = where.unit, where.gateway
    if where.direction != "up" or where.kind != kind:
        raise _Reject("format", f"topic {text!r} is not an up/{kind} topic")
    return where


def _try_keys(data: bytes, keys: Sequence[PublicKey]) -> ColumnBatch | None:
    """The batch, verified with the first key that verifies it; None when none does.
    ``_Reject("format")`` when the signature verifies but the body is malformed."""
    for key in keys:
        try:
            return unseal_columns(data, key)
        except BatchSignatureError:
            continue
        except BatchFormatError as exc:
            raise _Reject("format", str(exc)) from None
    return None


def _read_pin(pem: str, unit: str, gateway: str) -> _Pin | None:
    """A stored PEM as a pin (unchecked), or None when storage holds something unreadable."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("utf-8"))
        return _Pin(der=cert.public_bytes(serialization.Encoding.DER), pem=pem,
                    not_before=cert.not_valid_before_utc, key=_public_key(cert))
    except (ValueError, TypeError) as exc:
        log.warning("%s/%s: the pinned certificate cannot be read (%s); ignoring it",
                    unit, gateway, _why(exc))
        return None


def _public_key(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise TypeError(f"a {type(key).__name__} key")
    return key


def _check_client_usage(cert: x509.Certificate, name: str) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise _Reject("certificate", f"the certificate of {name} is a CA certificate, "
                          "not a gateway's")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise _Reject("certificate", f"the certificate of {name} has no extended key usage: "
                      "not a client certificate") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise _Reject("certificate", f"the certificate of {name} is not a client "
                      "certificate (no clientAuth extended key usage)")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.digital_signature:
        raise _Reject("certificate", f"the certificate of {name} does not allow "
                      "digitalSignature")


def _check_san(cert: x509.Certificate, unit: str, gateway: str) -> None:
    """A gateway URI in the subjectAltName (provisioning puts one there) must agree with the
    CN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    expected = f"{URN_PREFIX}gateway:{unit}:{gateway}"
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(f"{URN_PREFIX}gateway:") and uri != expected:
            raise _Reject("identity", f"the certificate of {unit}/{gateway} also names "
                          f"{uri!r}")


def _unexpected(exc: Exception) -> _Reject:
    return _Reject("format", f"could not be checked: {type(exc).__name__}: {_why(exc)}")


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    line = _WHITESPACE.sub(" ", text).strip() or "refused"
    return line if len(line) <= _MAX_REASON else line[:_MAX_REASON - 1] + "…"
