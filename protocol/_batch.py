"""Sealed batches: numbered, hash-chained, signed groups of readings (DESIGN.md decisions 1-3).

The gateway seals stored readings into batches once; every destination sends the same bytes;
a collector (and the national platform, after a province relays the bytes unchanged) checks
the signature with the gateway certificate's public key and the chain with ``prev``. Pure
functions, no I/O.

A batch carries a gateway-wide ``seq`` (1, 2, …), ``prev`` = SHA-256 of the previous sealed
batch (:data:`ZERO_HASH` for seq 1), a ``kind`` (``data``; ``resend``: rebuilt from history at
a platform's request, ``info`` says which request; ``gap``: readings that were lost, ``info``
says which and why), its creation time, the readings and the optional ``info`` mapping
(JSON-like: text, numbers, true/false, null, lists and maps, at most 3 containers deep below
it, 32 items a container, 8 KiB in all; lists come back as lists).

The sealed bytes (the exact MQTT payload; all integers big-endian; docs/batch-format.md)::

    offset  size  field
    0       4     magic  b"KEMB"
    4       1     version  1
    5       1     algorithm  1 = ECDSA P-256 with SHA-256, 2 = Ed25519
    6       1     kind  0 data, 1 resend, 2 gap
    7       1     U = length of unit
    8       1     G = length of gateway
    9       8     seq  (1 .. 2**63-1)
    17      8     created  (ms since the epoch)
    25      4     count  (readings, 0 .. 10,000)
    29      4     B = length of body
    33      32    prev
    65      U     unit  (ASCII, a unified social credit code)
    65+U    G     gateway  (ASCII, a gateway id)
    65+U+G  B     body  (zlib; protocol._batch_codec)
    …       64    signature over every byte before it: ECDSA r‖s (32 bytes each), or Ed25519

The header is not compressed, so :func:`peek` reads it without inflating anything; the
signature covers header and body. The body encoding (columns, decimal/float32/float64 values,
deltas, zlib; ``protocol._batch_codec`` says why) is chosen by measurement: 6.0 bytes a reading
at 200 readings a batch, signature included, against 165 for one JSON message per reading, 40
for a Sparkplug-B-like protobuf (7.9 with its DEFLATE body, unsigned) and 11.4 for JSON rows +
zlib (bench/bench_encoding.py; the table is in docs/batch-format.md).

Errors (all one line, never another exception type for bad input)::

    BatchError(ValueError)
    ├── BatchFormatError      not a well-formed batch: garbage, truncated, wrong magic or
    │                         version, too big, wrong schema, bad values (or, when sealing,
    │                         a batch that cannot be sealed)
    └── BatchSignatureError   the signature does not verify with the given key, or the key
                              is of a kind the envelope does not support
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from ._batch_codec import (
    MAX_READINGS,
    ReadingColumns,
    check_ts,
    decode_body,
    decode_columns,
    encode_body,
)
from ._credit import CreditCodeError, validate_credit_code
from ._identifiers import validate_gateway_id
from ._reading import Reading

__all__ = [
    "BATCH_KINDS",
    "MAX_SEALED_BYTES",
    "ZERO_HASH",
    "Batch",
    "BatchError",
    "BatchFormatError",
    "BatchHeader",
    "BatchSignatureError",
    "ColumnBatch",
    "batch_hash",
    "peek",
    "seal",
    "unseal",
    "unseal_columns",
]

log = logging.getLogger(__name__)

BATCH_KINDS = ("data", "resend", "gap")
ZERO_HASH = bytes(32)
# EMQX's default mqtt.max_packet_size is 1MB (docs.emqx.com, "MQTT Configuration"): a payload
# of at most 1,000,000 bytes leaves room for the topic and the PUBLISH header inside it.
MAX_SEALED_BYTES = 1_000_000
MAGIC = b"KEMB"
VERSION = 1
ALG_ECDSA_P256 = 1
ALG_ED25519 = 2
SIGNATURE_BYTES = 64                  # ECDSA P-256: r and s, 32 bytes each; Ed25519: 64
_P256_BYTES = 32
_SEQ_MAX = 2**63 - 1
_FIXED = struct.Struct(">4sBBBBBQqII32s")   # magic … prev, offsets 0-64
_ALGORITHMS = {ALG_ECDSA_P256: "ECDSA P-256", ALG_ED25519: "Ed25519"}


class BatchError(ValueError):
    """A batch that cannot be sealed, read or trusted."""


class BatchFormatError(BatchError):
    """Not a well-formed batch (or a batch that cannot be sealed as given)."""


class BatchSignatureError(BatchError):
    """The signature does not verify with the given key, or the key kind is not supported."""


@dataclass(frozen=True, slots=True)
class Batch:
    """What a sealed batch holds. :func:`seal` validates it; :func:`unseal` builds it."""

    unit: str
    gateway: str
    seq: int
    prev: bytes
    kind: str
    created: int
    readings: tuple[Reading, ...]
    info: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """The uncompressed header of a sealed batch, as :func:`peek` reads it (unverified)."""

    unit: str
    gateway: str
    seq: int
    prev: bytes
    kind: str
    created: int
    count: int


@dataclass(frozen=True)
class ColumnBatch:
    """What :func:`unseal_columns` returns: a :class:`Batch`'s fields with its readings as
    columns (``columns``), for a consumer that stores columns (the collector). ``readings``
    (the Reading tuple, as :attr:`Batch.readings`) is built the first time it is asked for;
    :meth:`to_batch` gives the plain Batch."""

    unit: str
    gateway: str
    seq: int
    prev: bytes
    kind: str
    created: int
    columns: ReadingColumns
    info: Mapping[str, Any] | None = None

    @property
    def count(self) -> int:
        """How many readings the batch holds."""
        return len(self.columns)

    @cached_property
    def readings(self) -> tuple[Reading, ...]:
        """The readings as :class:`Reading` tuples (built once, on first use)."""
        return self.columns.readings()

    def to_batch(self) -> Batch:
        """The same batch as a plain :class:`Batch`."""
        return Batch(unit=self.unit, gateway=self.gateway, seq=self.seq, prev=self.prev,
                     kind=self.kind, created=self.created, readings=self.readings,
                     info=self.info)


# ---------------------------------------------------------------- sealing

def seal(batch: Batch, key: PrivateKeyTypes) -> bytes:
    """Encode ``batch`` and sign it with ``key`` (ECDSA P-256 or Ed25519): the MQTT payload.

    ``BatchFormatError`` when the batch is invalid or its sealed form would be larger than
    :data:`MAX_SEALED_BYTES`; ``BatchSignatureError`` when the key is of another kind.
    """
    algorithm = _signing_algorithm(key)
    try:
        unit, gateway = _check_names(batch.unit, batch.gateway)
        if type(batch.seq) is not int or not 1 <= batch.seq <= _SEQ_MAX:
            raise ValueError(f"seq {batch.seq!r} is not an integer from 1 to {_SEQ_MAX}")
        if not isinstance(batch.prev, bytes) or len(batch.prev) != len(ZERO_HASH):
            raise ValueError(f"prev must be {len(ZERO_HASH)} bytes (a SHA-256 digest)")
        if batch.kind not in BATCH_KINDS:
            raise ValueError(f"kind {batch.kind!r} is not one of {', '.join(BATCH_KINDS)}")
        check_ts("created", batch.created)
        body = encode_body(batch.readings, batch.info)
    except ValueError as exc:
        raise BatchFormatError(f"cannot seal batch {batch.seq!r}: {exc}") from None
    head = _FIXED.pack(MAGIC, VERSION, algorithm, BATCH_KINDS.index(batch.kind), len(unit),
                       len(gateway), batch.seq, batch.created, len(batch.readings), len(body),
                       batch.prev)
    signed = b"".join((head, unit, gateway, body))
    size = len(signed) + SIGNATURE_BYTES
    if size > MAX_SEALED_BYTES:
        raise BatchFormatError(f"cannot seal batch {batch.seq}: {size} bytes, at most "
                               f"{MAX_SEALED_BYTES}; seal fewer readings a batch")
    return signed + _sign(key, signed)


def batch_hash(sealed: bytes) -> bytes:
    """SHA-256 of the sealed bytes: the next batch's ``prev``."""
    return hashlib.sha256(sealed).digest()


_VALID_NAMES: dict[tuple[str, str], tuple[bytes, bytes]] = {}   # already validated
_VALID_KEEP = 65_536


def _check_names(unit: object, gateway: object) -> tuple[bytes, bytes]:
    if type(unit) is str and type(gateway) is str:
        known = _VALID_NAMES.get((unit, gateway))
        if known is not None:              # a gateway's names repeat in every batch
            return known
    names = _validate_names(unit, gateway)
    if len(_VALID_NAMES) < _VALID_KEEP:
        _VALID_NAMES[unit, gateway] = names      # type: ignore[index]
    return names


def _validate_names(unit: object, gateway: object) -> tuple[bytes, bytes]:
    if not isinstance(unit, str):
        raise ValueError(f"unit {unit!r} is not text")
    try:
        canonical = validate_credit_code(unit)
    except CreditCodeError as exc:
        raise ValueError(f"unit: {exc}") from None
    if canonical != unit:
        raise ValueError(f"unit {unit!r} must be written {canonical!r}")
    if not isinstance(gateway, str):
        raise ValueError(f"gateway {gateway!r} is not text")
    validate_gateway_id(gateway)
    return unit.encode("ascii"), gateway.encode("ascii")


def _signing_algorithm(key: PrivateKeyTypes) -> int:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return ALG_ED25519
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return ALG_ECDSA_P256
    raise BatchSignatureError(f"cannot sign with a {_key_kind(key)} key: "
                              "only ECDSA P-256 and Ed25519")


def _sign(key: PrivateKeyTypes, data: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(data)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def _key_kind(key: object) -> str:
    curve = getattr(key, "curve", None)
    return f"{type(key).__name__}{f' {curve.name}' if curve is not None else ''}"


# ---------------------------------------------------------------- reading

def peek(sealed: bytes) -> BatchHeader:
    """The header of a sealed batch, cheaply: no inflating, **no verification**.

    ``BatchFormatError`` when the bytes are not a well-formed envelope.
    """
    return _parse(sealed)[0]


def unseal(sealed: bytes, public_key: PublicKeyTypes | None) -> Batch:
    """The batch in ``sealed``, after verifying its signature with ``public_key``.

    With ``public_key=None`` the signature is not checked (decode only: for tools, or bytes
    already verified). ``BatchSignatureError`` when it does not verify; ``BatchFormatError``
    for anything malformed. The signature is checked before the body is inflated.
    """
    header, body, count = _open(sealed, public_key)
    try:
        readings, info = decode_body(body, count)
    except ValueError as exc:
        raise BatchFormatError(f"batch {header.seq}: {exc}") from None
    return Batch(unit=header.unit, gateway=header.gateway, seq=header.seq, prev=header.prev,
                 kind=header.kind, created=header.created, readings=readings, info=info)


def unseal_columns(sealed: bytes, public_key: PublicKeyTypes | None) -> ColumnBatch:
    """As :func:`unseal` (the same checks, the same errors), with the readings as columns:
    what a consumer that stores columns wants, without a Reading object a reading."""
    header, body, count = _open(sealed, public_key)
    try:
        columns, info = decode_columns(body, count)
    except ValueError as exc:
        raise BatchFormatError(f"batch {header.seq}: {exc}") from None
    return ColumnBatch(unit=header.unit, gateway=header.gateway, seq=header.seq,
                       prev=header.prev, kind=header.kind, created=header.created,
                       columns=columns, info=info)


def _open(sealed: bytes, public_key: PublicKeyTypes | None) -> tuple[BatchHeader, bytes, int]:
    """(header, compressed body, count): the envelope parsed and, with a key, its signature
    verified (before anything is inflated)."""
    header, algorithm, body_at = _parse(sealed)
    sealed = bytes(sealed)
    signed_end = len(sealed) - SIGNATURE_BYTES
    if public_key is not None:
        _verify(public_key, algorithm, memoryview(sealed)[:signed_end],
                sealed[signed_end:], header.seq)
    return header, sealed[body_at:signed_end], header.count


def _parse(sealed: bytes) -> tuple[BatchHeader, int, int]:
    """(header, algorithm, body offset) or ``BatchFormatError``."""
    if not isinstance(sealed, bytes | bytearray | memoryview):
        raise BatchFormatError(f"a sealed batch is bytes, not {type(sealed).__name__}")
    sealed = bytes(sealed)
    size = len(sealed)
    if size > MAX_SEALED_BYTES:
        raise BatchFormatError(f"{size} bytes: larger than a batch may be "
                               f"({MAX_SEALED_BYTES})")
    if size < _FIXED.size + SIGNATURE_BYTES:
        raise BatchFormatError(f"{size} bytes: too short for a batch")
    (magic, version, algorithm, kind, n_unit, n_gateway, seq, created, count, n_body,
     prev) = _FIXED.unpack_from(sealed)
    if magic != MAGIC:
        raise BatchFormatError(f"not a Kemon batch: starts with {magic!r}, not {MAGIC!r}")
    if version != VERSION:
        raise BatchFormatError(f"batch format version {version} (this reads {VERSION})")
    if algorithm not in _ALGORITHMS:
        raise BatchFormatError(f"unknown signature algorithm {algorithm}")
    if kind >= len(BATCH_KINDS):
        raise BatchFormatError(f"unknown batch kind {kind}")
    expected = _FIXED.size + n_unit + n_gateway + n_body + SIGNATURE_BYTES
    if expected != size:
        raise BatchFormatError(f"{size} bytes, but the header's lengths add up to {expected}")
    at = _FIXED.size
    try:
        unit = sealed[at:at + n_unit].decode("ascii")
        gateway = sealed[at + n_unit:at + n_unit + n_gateway].decode("ascii")
        _check_names(unit, gateway)
        if not 1 <= seq <= _SEQ_MAX:
            raise ValueError(f"seq {seq} is not from 1 to {_SEQ_MAX}")
        check_ts("created", created)
        if count > MAX_READINGS:
            raise ValueError(f"{count} readings, at most {MAX_READINGS} a batch")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BatchFormatError(f"bad header: {exc}") from None
    header = BatchHeader(unit=unit, gateway=gateway, seq=seq, prev=prev,
                         kind=BATCH_KINDS[kind], created=created, count=count)
    return header, algorithm, at + n_unit + n_gateway


def _verify(key: PublicKeyTypes, algorithm: int, signed: memoryview, signature: bytes,
            seq: int) -> None:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey) and algorithm == ALG_ED25519:
            key.verify(signature, signed)
            return
        if (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
                and algorithm == ALG_ECDSA_P256):
            der = encode_dss_signature(int.from_bytes(signature[:_P256_BYTES], "big"),
                                       int.from_bytes(signature[_P256_BYTES:], "big"))
            key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            return
    except (InvalidSignature, ValueError):
        raise BatchSignatureError(f"batch {seq}: the {_ALGORITHMS[algorithm]} signature "
                                  "does not verify with the given key") from None
    raise BatchSignatureError(f"batch {seq}: signed with {_ALGORITHMS[algorithm]}; "
                              f"the given {_key_kind(key)} key cannot verify it")
