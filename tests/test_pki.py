"""The certificate library: chains verify under cryptography's RFC 5280 verifier, extensions are
what TLS stacks expect, identities round-trip through PEM files, keys are written 0600.

That OpenSSL (Mosquitto) accepts and refuses these certificates as intended is shown in
``test_brokers.py`` against a real broker.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification as xv
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import (
    CertificateCheckError,
    IdentityError,
    RefusedOverwrite,
    common_name,
    gateway_common_name,
    gateway_identity,
    load_cert,
    load_crl,
    load_key,
    make_ca,
    make_client_cert,
    make_collector_cert,
    make_crl,
    make_gateway_cert,
    make_server_cert,
    verify_issued,
    write_cert,
    write_crl,
    write_key,
)
from tests.conftest import UNIT

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return make_ca("Kemon Test CA")


def _policy(ca_cert: x509.Certificate, at: dt.datetime | None = None) -> xv.PolicyBuilder:
    builder = xv.PolicyBuilder().store(xv.Store([ca_cert]))
    return builder.time(at) if at is not None else builder


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage:
    ext = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ext.critical
    return ext.value


def test_keys_are_ecdsa_p256(ca) -> None:
    ca_key, ca_cert = ca
    key, cert = make_gateway_cert(ca_key, ca_cert, UNIT, "GW0001")
    for k in (ca_key, key):
        assert isinstance(k.curve, ec.SECP256R1)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_ca_is_a_ca_for_leaves_only(ca) -> None:
    _, ca_cert = ca
    bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    usage = _key_usage(ca_cert)
    assert usage.key_cert_sign and usage.crl_sign
    ca_cert.verify_directly_issued_by(ca_cert)          # self-signed
    assert ca_cert.not_valid_after_utc - NOW > dt.timedelta(days=3640)


@pytest.mark.parametrize("host", ["localhost", "broker.example.gov.cn", "127.0.0.1", "::1"])
def test_server_cert_verifies_for_each_of_its_hosts(ca, host: str) -> None:
    ca_key, ca_cert = ca
    _, cert = make_server_cert(ca_key, ca_cert,
                               ["localhost", "broker.example.gov.cn", "127.0.0.1", "::1"])
    try:
        subject: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    chain = _policy(ca_cert).build_server_verifier(subject).verify(cert, [])
    assert chain == [cert, ca_cert]


def test_server_cert_does_not_verify_for_another_host(ca) -> None:
    ca_key, ca_cert = ca
    _, cert = make_server_cert(ca_key, ca_cert, ["localhost"])
    verifier = _policy(ca_cert).build_server_verifier(
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with pytest.raises(xv.VerificationError):
        verifier.verify(cert, [])


def test_server_cert_extensions(ca) -> None:
    ca_key, ca_cert = ca
    _, cert = make_server_cert(ca_key, ca_cert, ["localhost", "10.0.0.7"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    usage = _key_usage(cert)
    assert usage.digital_signature
    assert not usage.key_encipherment and not usage.key_cert_sign   # RFC 5480 §3 for EC keys
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert dt.timedelta(days=824) < cert.not_valid_after_utc - NOW <= dt.timedelta(days=826)


def test_server_cert_rejects_bad_hosts(ca) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(ValueError, match="non-empty"):
        make_server_cert(ca_key, ca_cert, [])
    with pytest.raises(ValueError, match="non-empty"):
        make_server_cert(ca_key, ca_cert, "localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="neither"):
        make_server_cert(ca_key, ca_cert, ["bad host"])


def test_gateway_cert_verifies_as_a_client_and_names_its_identity(ca) -> None:
    ca_key, ca_cert = ca
    _, cert = make_gateway_cert(ca_key, ca_cert, UNIT, "GW0001")
    verified = _policy(ca_cert).build_client_verifier().verify(cert, [])
    assert verified.chain == [cert, ca_cert]
    assert verified.subjects == [
        x509.UniformResourceIdentifier(f"urn:kemon:gateway:{UNIT}:GW0001")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = _key_usage(cert)
    assert usage.digital_signature and not usage.key_encipherment
    assert common_name(cert) == f"{UNIT}/GW0001"


def test_client_cert_of_another_ca_does_not_verify(ca) -> None:
    _, ca_cert = ca
    other_key, other_cert = make_ca("Another CA")
    _, cert = make_gateway_cert(other_key, other_cert, UNIT, "GW0001")
    with pytest.raises(xv.VerificationError):
        _policy(ca_cert).build_client_verifier().verify(cert, [])
    with pytest.raises(CertificateCheckError, match="not issued by"):
        verify_issued(cert, ca_cert)


def test_expired_cert_made_with_explicit_dates() -> None:
    ca_key, ca_cert = make_ca("Older CA", not_before=NOW - dt.timedelta(days=30))
    start, end = NOW - dt.timedelta(days=10), NOW - dt.timedelta(days=1)
    _, cert = make_client_cert(ca_key, ca_cert, f"{UNIT}/GW0001", not_before=start,
                               not_after=end, uris=[f"urn:kemon:gateway:{UNIT}:GW0001"])
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == end.replace(microsecond=0)
    with pytest.raises(xv.VerificationError):
        _policy(ca_cert).build_client_verifier().verify(cert, [])
    with pytest.raises(CertificateCheckError, match="not at"):
        verify_issued(cert, ca_cert)
    # The same certificate was fine while it was valid (so the refusal above is the date).
    verify_issued(cert, ca_cert, at=NOW - dt.timedelta(days=5))
    _policy(ca_cert, at=NOW - dt.timedelta(days=5)).build_client_verifier().verify(cert, [])


def test_explicit_dates_must_be_ordered_and_aware(ca) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(ValueError, match="after"):
        make_client_cert(ca_key, ca_cert, "x", not_before=NOW, not_after=NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        make_client_cert(ca_key, ca_cert, "x", not_before=dt.datetime(2026, 1, 1),
                         not_after=dt.datetime(2027, 1, 1))


def test_gateway_identity_round_trips_through_pem_files(ca, tmp_path: Path) -> None:
    ca_key, ca_cert = ca
    key, cert = make_gateway_cert(ca_key, ca_cert, UNIT, "GW-07_b")
    write_cert(tmp_path / "gateway.pem", cert)
    write_key(tmp_path / "gateway.key", key)
    loaded = load_cert(tmp_path / "gateway.pem")
    assert loaded == cert
    assert loaded.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        f"{UNIT}/GW-07_b"
    assert gateway_identity(loaded) == (UNIT, "GW-07_b")
    loaded_key = load_key(tmp_path / "gateway.key")
    assert loaded_key.private_numbers() == key.private_numbers()
    assert loaded_key.public_key() == loaded.public_key()


@pytest.mark.parametrize("cn", [
    "collector-main",                     # no "/"
    f"{UNIT}/",                           # empty gateway id
    f"{UNIT}/GW/1",                       # "/" inside the gateway id
    "91320100MA1ABCDE0X/GW0001",          # wrong check character
    f"{UNIT.lower()}/GW0001",             # unit not in canonical form
])
def test_gateway_identity_refuses_what_is_not_one(ca, cn: str) -> None:
    ca_key, ca_cert = ca
    _, cert = make_client_cert(ca_key, ca_cert, cn)
    with pytest.raises(IdentityError):
        gateway_identity(cert)


def test_identity_names_are_validated() -> None:
    assert gateway_common_name(UNIT, "GW0001") == f"{UNIT}/GW0001"
    with pytest.raises(IdentityError, match="check character"):
        gateway_common_name("91320100MA1ABCDE0X", "GW0001")
    with pytest.raises(IdentityError, match="gateway id"):
        gateway_common_name(UNIT, "GW 1")


def test_collector_cert(ca) -> None:
    ca_key, ca_cert = ca
    _, cert = make_collector_cert(ca_key, ca_cert, "province")
    assert common_name(cert) == "collector-province"
    _policy(ca_cert).build_client_verifier().verify(cert, [])
    with pytest.raises(IdentityError):
        make_collector_cert(ca_key, ca_cert, "a/b")


def test_key_file_is_0600_even_with_a_permissive_umask(ca, tmp_path: Path) -> None:
    ca_key, _ = ca
    old = os.umask(0)
    try:
        write_key(tmp_path / "ca.key", ca_key)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.key"]   # no temporary left


def test_key_and_cert_files_are_not_overwritten_unless_asked(ca, tmp_path: Path) -> None:
    ca_key, ca_cert = ca
    path = tmp_path / "gateway.key"
    first, second = make_gateway_cert(ca_key, ca_cert, UNIT, "GW0001")[0], ec.generate_private_key(
        ec.SECP256R1())
    write_key(path, first)
    with pytest.raises(RefusedOverwrite) as info:
        write_key(path, second)
    assert info.value.path == path
    assert isinstance(info.value, FileExistsError)
    assert load_key(path).private_numbers() == first.private_numbers()
    write_key(path, second, overwrite=True)
    assert load_key(path).private_numbers() == second.private_numbers()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    write_cert(tmp_path / "ca.pem", ca_cert)
    with pytest.raises(RefusedOverwrite):
        write_cert(tmp_path / "ca.pem", ca_cert)
    assert stat.S_IMODE((tmp_path / "ca.pem").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.pem", "gateway.key"]


def test_chain_file_keeps_order(ca, tmp_path: Path) -> None:
    ca_key, ca_cert = ca
    _, cert = make_server_cert(ca_key, ca_cert, ["localhost"])
    write_cert(tmp_path / "chain.pem", [cert, ca_cert])
    assert x509.load_pem_x509_certificates((tmp_path / "chain.pem").read_bytes()) == \
        [cert, ca_cert]
    assert load_cert(tmp_path / "chain.pem") == cert


def test_crl_lists_revoked_serials_and_is_signed_by_the_ca(ca, tmp_path: Path) -> None:
    ca_key, ca_cert = ca
    _, revoked = make_gateway_cert(ca_key, ca_cert, UNIT, "GW0001")
    _, kept = make_gateway_cert(ca_key, ca_cert, UNIT, "GW0002")
    crl = make_crl(ca_key, ca_cert, [revoked.serial_number, revoked.serial_number],
                   crl_number=7)
    write_crl(tmp_path / "ca.crl", crl)
    loaded = load_crl(tmp_path / "ca.crl")
    assert loaded.is_signature_valid(ca_cert.public_key())
    assert loaded.issuer == ca_cert.subject
    assert [r.serial_number for r in loaded] == [revoked.serial_number]
    assert loaded.get_revoked_certificate_by_serial_number(kept.serial_number) is None
    assert loaded.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert loaded.next_update_utc is not None and loaded.next_update_utc > NOW
    other_key, _ = make_ca("Another CA")
    assert not loaded.is_signature_valid(other_key.public_key())
