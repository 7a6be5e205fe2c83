"""Certificates for mutual TLS: a certificate authority, broker (server) certificates, gateway
and collector (client) certificates, a revocation list, and the files they live in.

Everything is made with ``cryptography`` (no ``openssl`` subprocess). Keys are ECDSA on P-256.
The broker learns who a client is from its certificate's common name (Mosquitto's
``use_identity_as_username``, EMQX's ``peer_cert_as_username = cn``):

* a gateway's CN is ``<unit>/<gateway>`` (18-character unified social credit code, gateway id),
  so the ACL pattern ``kemon/v1/%u/up/#`` is exactly its own topic prefix;
* a collector's CN is ``collector-<name>``; it never contains ``/``, so it can never be mistaken
  for a gateway (and a gateway CN can never name a collector).

Errors::

    PkiError                    base
    ├── IdentityError           a name is not a valid gateway/collector identity (also ValueError)
    ├── RefusedOverwrite        a key or certificate file exists and overwrite was not asked for
    │                           (also FileExistsError)
    └── CertificateCheckError   a certificate is not issued by that CA, or not valid now
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import validate_credit_code, validate_gateway_id
from protocol._files import write_atomically

__all__ = [
    "CA_DAYS",
    "COLLECTOR_PREFIX",
    "CRL_DAYS",
    "LEAF_DAYS",
    "URN_PREFIX",
    "CertificateCheckError",
    "IdentityError",
    "PkiError",
    "RefusedOverwrite",
    "collector_common_name",
    "common_name",
    "gateway_common_name",
    "gateway_identity",
    "generate_key",
    "load_cert",
    "load_crl",
    "load_key",
    "make_ca",
    "make_client_cert",
    "make_collector_cert",
    "make_crl",
    "make_gateway_cert",
    "make_server_cert",
    "verify_issued",
    "write_cert",
    "write_crl",
    "write_key",
]

log = logging.getLogger(__name__)

CA_DAYS = 3650
# CA/Browser Forum Baseline Requirements §6.3.2 (certificates issued from 2018-03-01): at most
# 825 days for a TLS leaf; TLS clients such as Apple's enforce it, so we keep to it everywhere.
LEAF_DAYS = 825
# A CRL whose nextUpdate has passed makes OpenSSL refuse *every* client
# (X509_V_ERR_CRL_HAS_EXPIRED), so the default is long; re-issue it (``make_crl``) well before.
CRL_DAYS = 365
# Validity starts this long before "now" so a peer whose clock is a little behind still accepts a
# certificate made a moment ago.
_BACKDATE = dt.timedelta(hours=1)
COLLECTOR_PREFIX = "collector-"
URN_PREFIX = "urn:kemon:"     # our own (unregistered) namespace for identities in a SAN URI
_COLLECTOR_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")   # same alphabet as a gateway id: no "/"


class PkiError(Exception):
    """Base of the provisioning certificate errors."""


class IdentityError(PkiError, ValueError):
    """A certificate or name does not carry a valid gateway (or collector) identity."""


class RefusedOverwrite(PkiError, FileExistsError):
    """A file exists and the caller did not pass ``overwrite=True``; ``path`` names it."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} exists; refusing to overwrite it (pass overwrite=True)")
        self.path = path


class CertificateCheckError(PkiError):
    """A certificate was not issued by the given CA, or is outside its validity period."""


# --- keys and names -------------------------------------------------------------------------

def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def gateway_common_name(unit: str, gateway: str) -> str:
    """``<unit>/<gateway>``, both validated (the credit code's check character included)."""
    try:
        canonical = validate_credit_code(unit)
        validate_gateway_id(gateway)
    except ValueError as exc:
        raise IdentityError(str(exc)) from None
    if canonical != unit:
        raise IdentityError(f"unit {unit!r} must be written {canonical!r}")
    return f"{unit}/{gateway}"


def collector_common_name(name: str) -> str:
    """``collector-<name>``; ``name`` is 1-32 of A-Z a-z 0-9 _ - (never a ``/``)."""
    if not _COLLECTOR_NAME.fullmatch(name):
        raise IdentityError(f"{name!r} is not a collector name: 1-32 of A-Z a-z 0-9 _ -")
    return COLLECTOR_PREFIX + name


def common_name(cert: x509.Certificate) -> str:
    """The subject's (single) common name."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise IdentityError(f"certificate subject {cert.subject.rfc4514_string()!r} "
                            f"has {len(attrs)} common names, expected one")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8")


def gateway_identity(cert: x509.Certificate) -> tuple[str, str]:
    """``(unit, gateway)`` from a gateway certificate's CN, or ``IdentityError``."""
    cn = common_name(cert)
    unit, sep, gateway = cn.partition("/")
    if not sep:
        raise IdentityError(f"common name {cn!r} is not <unit>/<gateway>")
    gateway_common_name(unit, gateway)     # validates both parts
    return unit, gateway


# --- certificates ---------------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(days: int, not_before: dt.datetime | None,
              not_after: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else _now() - _BACKDATE
    end = not_after if not_after is not None else start + _BACKDATE + dt.timedelta(days=days)
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("not_before and not_after must be timezone-aware datetimes")
    if end <= start:
        raise ValueError(f"not_after ({end.isoformat()}) must be after not_before "
                         f"({start.isoformat()})")
    return start, end


def make_ca(name: str, days: int = CA_DAYS, *,
            key: ec.EllipticCurvePrivateKey | None = None,
            not_before: dt.datetime | None = None,
            not_after: dt.datetime | None = None,
            ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed certificate authority that issues leaf certificates only (path length 0).

    ``key`` re-certifies an existing CA key; explicit dates override ``days``.
    """
    ca_key = key if key is not None else generate_key()
    start, end = _validity(days, not_before, not_after)
    public = ca_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    log.info("made CA %r, valid until %s", name, end.isoformat())
    return ca_key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str,
          usage: x509.ObjectIdentifier, san: Sequence[x509.GeneralName],
          start: dt.datetime, end: dt.datetime,
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = generate_key()
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # RFC 5480 §3: an EC key may be used for digitalSignature (ECDHE-ECDSA handshakes);
        # keyEncipherment and dataEncipherment are for RSA key transport and must not appear.
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise ValueError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     hosts: Sequence[str], days: int = LEAF_DAYS, *,
                     not_before: dt.datetime | None = None,
                     not_after: dt.datetime | None = None,
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A broker's certificate for ``hosts`` (DNS names and IP addresses, all in the SAN).

    The CN is the first host (clients match the SAN, RFC 6125 §6.4.4, but a CN helps people).
    """
    if isinstance(hosts, str) or not hosts:
        raise ValueError("hosts must be a non-empty list of DNS names or IP addresses")
    names = [_general_name(h) for h in hosts]
    start, end = _validity(days, not_before, not_after)
    key, cert = _leaf(ca_key, ca_cert, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, names,
                      start, end)
    log.info("made server certificate for %s, valid until %s", ", ".join(hosts),
             end.isoformat())
    return key, cert


def make_client_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                     common_name: str, days: int = LEAF_DAYS, *,
                     not_before: dt.datetime | None = None,
                     not_after: dt.datetime | None = None,
                     uris: Sequence[str] = (),
                     ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A client (clientAuth) certificate whose CN is ``common_name`` — the broker's username.

    Explicit ``not_before``/``not_after`` (timezone-aware) override ``days``, e.g. to make an
    already expired certificate for a test. ``uris`` go into a subjectAltName (RFC 5280
    §4.2.1.6); verifiers that follow RFC 5280 strictly (``cryptography``'s ClientVerifier) want
    one, while Mosquitto and EMQX read the CN.
    """
    if not common_name:
        raise IdentityError("a client certificate needs a common name")
    start, end = _validity(days, not_before, not_after)
    san = [x509.UniformResourceIdentifier(u) for u in uris]
    key, cert = _leaf(ca_key, ca_cert, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, san,
                      start, end)
    log.info("made client certificate %r, valid until %s", common_name, end.isoformat())
    return key, cert


def make_gateway_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                      unit: str, gateway: str, days: int = LEAF_DAYS,
                      ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A gateway's client certificate, CN ``<unit>/<gateway>``, SAN URI
    ``urn:kemon:gateway:<unit>:<gateway>``."""
    return make_client_cert(ca_key, ca_cert, gateway_common_name(unit, gateway), days,
                            uris=[f"{URN_PREFIX}gateway:{unit}:{gateway}"])


def make_collector_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                        name: str, days: int = LEAF_DAYS,
                        ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A collector's client certificate, CN ``collector-<name>``, SAN URI
    ``urn:kemon:collector:<name>``."""
    return make_client_cert(ca_key, ca_cert, collector_common_name(name), days,
                            uris=[f"{URN_PREFIX}collector:{name}"])


def verify_issued(cert: x509.Certificate, ca_cert: x509.Certificate, *,
                  at: dt.datetime | None = None) -> None:
    """Raise ``CertificateCheckError`` unless ``ca_cert`` signed ``cert`` and it is valid ``at``
    (default: now). A quick local check (e.g. that ``gateway.pem`` matches ``ca.pem``), not a
    substitute for the TLS stack's own verification."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CertificateCheckError(
            f"{cert.subject.rfc4514_string()} is not issued by "
            f"{ca_cert.subject.rfc4514_string()}: {exc or type(exc).__name__}") from None
    when = at if at is not None else _now()
    if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
        raise CertificateCheckError(
            f"{cert.subject.rfc4514_string()} is valid from "
            f"{cert.not_valid_before_utc.isoformat()} to {cert.not_valid_after_utc.isoformat()}, "
            f"not at {when.isoformat()}")


def make_crl(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
             revoked_serials: Iterable[int], *, crl_number: int = 1,
             days: int = CRL_DAYS) -> x509.CertificateRevocationList:
    """A CRL revoking ``revoked_serials`` (certificate serial numbers), signed by the CA.

    Re-issue with a higher ``crl_number`` when revoking more (RFC 5280 §5.2.3).
    """
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False)
    )
    for serial in sorted(set(revoked_serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build())
    return builder.sign(ca_key, hashes.SHA256())


# --- files ----------------------------------------------------------------------------------

def _write_atomic(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    """``protocol._files.write_atomically``, refusing with ``RefusedOverwrite``."""
    try:
        write_atomically(path, data, mode, overwrite=overwrite)
    except FileExistsError:
        raise RefusedOverwrite(path) from None


def write_key(path: Path | str, key: ec.EllipticCurvePrivateKey, *,
              overwrite: bool = False) -> None:
    """Write an unencrypted PKCS#8 PEM key with mode 0600; refuse to replace a file unless
    ``overwrite``. The key is never logged."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    _write_atomic(Path(path), data, 0o600, overwrite)
    log.info("wrote private key %s (mode 0600)", path)


def write_cert(path: Path | str, cert: x509.Certificate | Sequence[x509.Certificate], *,
               overwrite: bool = False) -> None:
    """Write one certificate (or a chain, leaf first) as PEM, mode 0644."""
    certs = [cert] if isinstance(cert, x509.Certificate) else list(cert)
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), data, 0o644, overwrite)
    log.info("wrote certificate %s", path)


def write_crl(path: Path | str, crl: x509.CertificateRevocationList, *,
              overwrite: bool = True) -> None:
    """Write a CRL as PEM, mode 0644 (replacing the previous one by default: CRLs are re-issued)."""
    _write_atomic(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644, overwrite)
    log.info("wrote revocation list %s", path)


def load_key(path: Path | str) -> ec.EllipticCurvePrivateKey:
    """An unencrypted PEM ECDSA private key."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: not an ECDSA private key ({type(key).__name__})")
    return key


def load_cert(path: Path | str) -> x509.Certificate:
    """The first certificate of a PEM file."""
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    return certs[0]


def load_crl(path: Path | str) -> x509.CertificateRevocationList:
    """A PEM certificate revocation list."""
    return x509.load_pem_x509_crl(Path(path).read_bytes())
