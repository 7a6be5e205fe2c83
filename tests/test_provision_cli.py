"""`kemon provision`: a CA and the identities it issues, as files a broker, a gateway and a
collector use; keys 0600 and never overwritten unless told; bad input is one line, exit 2."""

from __future__ import annotations

import socket
import stat
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from provisioning import gateway_identity, load_cert, load_crl, load_key, verify_issued

from .brokers import MOSQUITTO, Broker, ClientFiles, MqttClient, Pki, free_port, tls_alert
from .conftest import UNIT, run_kemon


def ok(*args: str) -> str:
    res = run_kemon("provision", *args)
    assert res.returncode == 0, res.stderr
    assert "PRIVATE KEY" not in res.stdout + res.stderr          # keys are never printed
    return res.stdout


def refused(*args: str) -> str:
    res = run_kemon("provision", *args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("error: ") and "Traceback" not in res.stderr
    return line


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_a_province_from_scratch(tmp_path: Path) -> None:
    ca, gw, srv, col = (tmp_path / n for n in ("ca", "gw", "srv", "col"))
    assert "CN=Kemon Test CA" in ok("ca", "init", "--dir", str(ca), "--name", "Kemon Test CA")
    assert mode(ca / "ca.key") == 0o600 and (ca / "ca.crl").is_file()
    ca_cert = load_cert(ca / "ca.pem")

    out = ok("gateway", "--ca-dir", str(ca), "--unit", UNIT, "--id", "GW0001",
             "--destination", "province=mqtts://127.0.0.1:8883",
             "--destination", "national=mqtts://national.example:8883", "--out", str(gw))
    assert f"CN={UNIT}/GW0001" in out
    cert = load_cert(gw / "gateway.pem")
    verify_issued(cert, ca_cert)
    assert gateway_identity(cert) == (UNIT, "GW0001")
    assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert mode(gw / "gateway.key") == 0o600
    assert (gw / "ca.pem").read_bytes() == (ca / "ca.pem").read_bytes()
    check = run_kemon("gateway", "check", "-c", str(gw / "gateway.toml"))
    assert check.returncode == 0, check.stderr
    assert "2 destinations" in check.stdout

    ok("server", "--ca-dir", str(ca), "--host", "broker.example", "--host", "127.0.0.1",
       "--out", str(srv))
    server = load_cert(srv / "server.pem")
    verify_issued(server, ca_cert)
    assert usages(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "broker.example" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]

    ok("collector", "--ca-dir", str(ca), "--name", "js1", "--out", str(col))
    collector = load_cert(col / "collector.pem")
    assert collector.subject.rfc4514_string() == "CN=collector-js1"

    assert "1 revoked, CRL number 2" in ok("revoke", "--ca-dir", str(ca), str(gw / "gateway.pem"))
    assert "2 revoked, CRL number 3" in ok("revoke", "--ca-dir", str(ca),
                                           str(col / "collector.pem"))
    crl = load_crl(ca / "ca.crl")
    assert crl.is_signature_valid(ca_cert.public_key())  # type: ignore[arg-type]
    assert {r.serial_number for r in crl} == {cert.serial_number, collector.serial_number}


def test_nothing_is_overwritten_unless_forced(tmp_path: Path) -> None:
    ca, gw = tmp_path / "ca", tmp_path / "gw"
    ok("ca", "init", "--dir", str(ca), "--name", "A")
    first = (ca / "ca.key").read_bytes()
    assert "ca.key exists; refusing to overwrite it (use --force)" in refused(
        "ca", "init", "--dir", str(ca), "--name", "B")
    assert (ca / "ca.key").read_bytes() == first
    ok("gateway", "--ca-dir", str(ca), "--unit", UNIT, "--id", "GW0001", "--out", str(gw))
    key = (gw / "gateway.key").read_bytes()
    assert "gateway.toml exists" in refused("gateway", "--ca-dir", str(ca), "--unit", UNIT,
                                            "--id", "GW0001", "--out", str(gw))
    assert (gw / "gateway.key").read_bytes() == key
    ok("gateway", "--ca-dir", str(ca), "--unit", UNIT, "--id", "GW0001", "--out", str(gw),
       "--force")
    assert (gw / "gateway.key").read_bytes() != key and mode(gw / "gateway.key") == 0o600


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert "not found" in refused("collector", "--ca-dir", str(ca), "--name", "x",
                                  "--out", str(tmp_path / "c"))
    ok("ca", "init", "--dir", str(ca), "--name", "A")
    base = ("gateway", "--ca-dir", str(ca), "--out", str(tmp_path / "g"))
    assert "--unit:" in refused(*base, "--unit", UNIT[:-1] + "X", "--id", "GW0001")
    assert "--id:" in refused(*base, "--unit", UNIT, "--id", "bad/id")
    assert "NAME=mqtts://host:port" in refused(*base, "--unit", UNIT, "--id", "GW0001",
                                               "--destination", "province")
    assert "unique" in refused(*base, "--unit", UNIT, "--id", "GW0001",
                               "--destination", "a=mqtts://h:1", "--destination", "a=mqtts://h:2")
    assert "--name:" in refused("collector", "--ca-dir", str(ca), "--name", "a/b",
                                "--out", str(tmp_path / "c"))
    assert not (tmp_path / "g").exists()                         # nothing half-written
    other = tmp_path / "other"
    ok("ca", "init", "--dir", str(other), "--name", "Other")
    ok("collector", "--ca-dir", str(other), "--name", "x", "--out", str(tmp_path / "x"))
    assert "not by this CA" in refused("revoke", "--ca-dir", str(ca),
                                       str(tmp_path / "x" / "collector.pem"))
    (ca / "ca.key").write_bytes((other / "ca.key").read_bytes())
    assert "is not the key of" in refused("collector", "--ca-dir", str(ca), "--name", "y",
                                          "--out", str(tmp_path / "y"))


def test_a_real_broker_takes_the_provisioned_files_and_the_revocation(tmp_path: Path) -> None:
    """Mosquitto (mutual TLS, CRL, the Kemon ACL) with the server certificate and CA made by
    `kemon provision`; the provisioned gateway connects and publishes on its own topic until
    it is revoked."""
    ca, gw, srv = tmp_path / "ca", tmp_path / "gw", tmp_path / "srv"
    ok("ca", "init", "--dir", str(ca), "--name", "Kemon Test CA")
    ok("server", "--ca-dir", str(ca), "--host", "127.0.0.1", "--out", str(srv))
    ok("gateway", "--ca-dir", str(ca), "--unit", UNIT, "--id", "GW0001", "--out", str(gw))
    pki = Pki(dir=tmp_path, ca_key=load_key(ca / "ca.key"), ca_cert=load_cert(ca / "ca.pem"),
              ca_path=ca / "ca.pem", server_cert_path=srv / "server.pem",
              server_key_path=srv / "server.key", crl_path=ca / "ca.crl", hosts=("127.0.0.1",))
    files = ClientFiles(f"{UNIT}/GW0001", gw / "gateway.pem", gw / "gateway.key", gw / "ca.pem",
                        load_cert(gw / "gateway.pem").serial_number)
    with Broker(pki, tmp_path / "broker") as broker:
        with MqttClient.connect(broker, files) as client:
            assert not client.publish(f"kemon/v1/{UNIT}/GW0001/up/status", b"{}").is_failure
            assert client.publish(f"kemon/v1/{UNIT}/GW0002/up/status", b"{}").is_failure
        ok("revoke", "--ca-dir", str(ca), str(gw / "gateway.pem"))
        broker.restart()                     # Mosquitto reads its CRL at start
        assert tls_alert(broker, files) == "SSLV3_ALERT_CERTIFICATE_REVOKED"


def test_provisioned_mosquitto_allows_and_denies_as_the_acl_says(tmp_path: Path) -> None:
    ca, srv, gw, col, out = (tmp_path / n for n in ("ca", "srv", "gw", "col", "broker"))
    ok("ca", "init", "--dir", str(ca), "--name", "Kemon Test CA")
    ok("server", "--ca-dir", str(ca), "--host", "127.0.0.1", "--out", str(srv))
    ok("gateway", "--ca-dir", str(ca), "--unit", UNIT, "--id", "GW0001", "--out", str(gw))
    ok("collector", "--ca-dir", str(ca), "--name", "js1", "--out", str(col))
    port = free_port()
    # user root: the pytest folder is 0700 (HINTS.md); production keeps the default drop
    out_text = ok("broker", "--ca-dir", str(ca), "--server-dir", str(srv), "--collector", "js1",
                  "--port", str(port), "--user", "root", "--out", str(out))
    assert f"mosquitto -c {(out / 'mosquitto.conf').resolve()}" in out_text
    assert "mosquitto.conf exists" in refused("broker", "--ca-dir", str(ca), "--server-dir",
                                              str(srv), "--out", str(out))
    assert oct(mode(out / "server.key")) == oct(0o600)
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(out / "mosquitto.conf")],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        target: Any = SimpleNamespace(host="127.0.0.1", port=port,
                                      pki=SimpleNamespace(ca_path=ca / "ca.pem"))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.05)
        gateway = files_of(gw, "gateway", f"{UNIT}/GW0001")
        collector = files_of(col, "collector", "collector-js1")
        mine, other = f"kemon/v1/{UNIT}/GW0001", f"kemon/v1/{UNIT}/GW0002"
        with MqttClient.connect(target, collector, "js1") as c, \
                MqttClient.connect(target, gateway, "gw") as g:
            c.subscribe("kemon/v1/+/+/up/#")
            g.subscribe(f"{mine}/down/#")
            assert not g.publish(f"{mine}/up/data", b"x").is_failure
            assert c.expect().topic == f"{mine}/up/data"
            assert g.publish(f"{other}/up/data", b"x").value == 0x87         # not its prefix
            assert not c.publish(f"{mine}/down/resend", b"{}").is_failure
            assert g.expect().topic == f"{mine}/down/resend"
            assert c.publish(f"{mine}/up/data", b"x").value == 0x87          # not a relay
        assert tls_alert(target, None) is not None                  # anonymous: refused
    finally:
        proc.terminate()
        proc.wait(10)
    assert (out / "data" / "mosquitto.db").exists()                 # persistence on


def files_of(folder: Path, stem: str, cn: str) -> ClientFiles:
    cert = folder / f"{stem}.pem"
    return ClientFiles(cn, cert, folder / f"{stem}.key", folder / "ca.pem",
                       load_cert(cert).serial_number)


def test_provision_broker_for_emqx_writes_the_listener_and_the_acl(tmp_path: Path) -> None:
    from pyhocon import ConfigFactory

    from .test_provision_emqx import check_rules, read_terms

    ca, srv, out = tmp_path / "ca", tmp_path / "srv", tmp_path / "emqx"
    ok("ca", "init", "--dir", str(ca), "--name", "Kemon Test CA")
    ok("server", "--ca-dir", str(ca), "--host", "127.0.0.1", "--out", str(srv))
    args = ("broker", "--kind", "emqx", "--ca-dir", str(ca), "--server-dir", str(srv),
            "--collector", "js1", "--relay", "js", "--port", "9883", "--bind", "10.0.0.5",
            "--user", "root", "--out", str(out))
    text = ok(*args)
    conf_path = (out / "emqx-kemon.hocon").resolve()
    assert f'include "{conf_path}"' in text
    assert not (out / "mosquitto.conf").exists() and not (out / "data").exists()
    conf = ConfigFactory.parse_string(conf_path.read_text(encoding="utf-8"))
    assert conf["listeners.ssl.default.bind"] == "10.0.0.5:9883"
    ssl = conf["listeners.ssl.default.ssl_options"]
    for key, name in (("cacertfile", "ca.pem"), ("certfile", "server.pem"),
                      ("keyfile", "server.key")):
        assert Path(ssl[key]).read_bytes() == (ca if name == "ca.pem" else srv).joinpath(
            name).read_bytes(), key
    assert (ssl["verify"], ssl["fail_if_no_peer_cert"]) == ("verify_peer", True)
    assert conf["mqtt.peer_cert_as_username"] == "cn"
    [source] = conf["authorization.sources"]
    terms = read_terms(Path(source["path"]).read_text(encoding="utf-8"))
    check_rules(terms)
    assert str(terms[-1]) == str(read_terms("{deny, all}.")[0])        # ends in deny
    users = {t[1][1] for t in terms if isinstance(t[1], tuple)}
    assert users == {"collector-js1", "collector-js"}
    assert oct(mode(out / "server.key")) == oct(0o600)
    assert "emqx-kemon.hocon exists" in refused(*args)                  # no silent overwrite
    ok(*args, "--force")
    assert "--bind: 'broker.example' is not an IP address" in refused(
        "broker", "--kind", "emqx", "--ca-dir", str(ca), "--server-dir", str(srv),
        "--bind", "broker.example", "--out", str(tmp_path / "other"))
    assert not (tmp_path / "other").exists()
