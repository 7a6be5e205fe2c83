"""The test broker is the real thing: Mosquitto 2.0.11 with mutual TLS refuses what it should
(no certificate, another CA, an expired or revoked certificate), enforces Kemon's topic ACL on
certificate identities, and keeps retained messages and sessions across a restart.
"""

from __future__ import annotations

import datetime as dt
import queue
import ssl
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.brokers import (  # noqa: F401  (the fixtures)
    Broker,
    BrokerError,
    ConnectRefused,
    MqttClient,
    Pki,
    broker_fixture,
    make_pki,
    pki_fixture,
    tls_alert,
)
from tests.conftest import UNIT

OTHER_UNIT = "91110000MA00000077"   # checked below: a valid code of another unit


def up(gateway: str, kind: str = "data", unit: str = UNIT) -> str:
    return f"kemon/v1/{unit}/{gateway}/up/{kind}"


def down(gateway: str, kind: str = "notice", unit: str = UNIT) -> str:
    return f"kemon/v1/{unit}/{gateway}/down/{kind}"


def drain(client: MqttClient, timeout: float = 0.3) -> list[tuple[str, bytes]]:
    """What else arrives within ``timeout``."""
    got = []
    while True:
        try:
            msg = client.expect(timeout)
        except queue.Empty:
            return got
        got.append((msg.topic, msg.payload))


def mosquitto_pids() -> set[int]:
    return {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "mosquitto"}


def test_other_unit_code_is_valid() -> None:
    from protocol import validate_credit_code
    assert validate_credit_code(OTHER_UNIT) == OTHER_UNIT


def test_gateway_publishes_to_its_own_up_and_a_collector_receives_it(
        broker: Broker, pki: Pki) -> None:
    with MqttClient.connect(broker, pki.collector()) as collector, \
            MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gateway:
        collector.subscribe("kemon/v1/+/+/up/#")
        reason = gateway.publish(up("GW0001"), b"reading")
        assert not reason.is_failure
        msg = collector.expect()
        assert (msg.topic, msg.payload, msg.qos) == (up("GW0001"), b"reading", 1)
    assert f"u'{UNIT}/GW0001'" in broker.log_text()     # the CN became the username


def test_gateway_cannot_publish_outside_its_own_up(broker: Broker, pki: Pki) -> None:
    with MqttClient.connect(broker, pki.collector()) as collector, \
            MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gateway:
        collector.subscribe("kemon/v1/#")
        forbidden = [up("GW0002"),                 # another gateway of the same unit
                     up("GW0001", unit=OTHER_UNIT),  # same gateway id, another unit
                     down("GW0001"),               # its own down/: platforms write there
                     f"kemon/v1/{UNIT}/GW0001/other",
                     "elsewhere"]
        for topic in forbidden:
            assert gateway.publish(topic, b"forged").getName() == "Not authorized", topic
        assert not gateway.publish(up("GW0001"), b"genuine").is_failure
        # Delivery is in order on one connection: once "genuine" arrived, nothing forged can.
        assert (collector.expect().payload) == b"genuine"
        assert drain(collector) == []


def test_gateway_reads_only_its_own_down(broker: Broker, pki: Pki) -> None:
    with MqttClient.connect(broker, pki.collector()) as collector, \
            MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gw1, \
            MqttClient.connect(broker, pki.gateway(UNIT, "GW0002")) as gw2:
        gw1.subscribe("kemon/v1/#")      # SUBSCRIBE is granted; delivery is what is checked
        for gateway in ("GW0002", "GW0001"):
            assert not collector.publish(down(gateway), gateway.encode()).is_failure
        assert not gw2.publish(up("GW0002"), b"gw2 reading").is_failure
        assert not collector.publish(down("GW0001", "last"), b"end").is_failure
        assert [(m.topic, m.payload) for m in (gw1.expect(), gw1.expect())] == [
            (down("GW0001"), b"GW0001"), (down("GW0001", "last"), b"end")]
        assert drain(gw1) == []


def test_collector_cannot_impersonate_a_gateway(broker: Broker, pki: Pki) -> None:
    with MqttClient.connect(broker, pki.collector()) as collector, \
            MqttClient.connect(broker, pki.collector("second")) as ungranted:
        collector.subscribe("kemon/v1/+/+/up/#")
        assert collector.publish(up("GW0001"), b"forged").getName() == "Not authorized"
        # A collector name the broker's ACL does not list has no rights at all.
        assert ungranted.publish(down("GW0001"), b"x").getName() == "Not authorized"
        assert drain(collector) == []


def test_acl_grants_every_listed_collector(pki: Pki, tmp_path: Path) -> None:
    with Broker(pki, tmp_path / "b", collectors=("test", "second")) as b, \
            MqttClient.connect(b, pki.collector("second")) as second, \
            MqttClient.connect(b, pki.gateway(UNIT, "GW0001")) as gateway:
        second.subscribe("kemon/v1/+/+/up/#")
        gateway.publish(up("GW0001"), b"r")
        assert second.expect().payload == b"r"


def test_client_without_a_certificate_is_refused(broker: Broker, pki: Pki) -> None:
    with pytest.raises(ConnectRefused):
        MqttClient.connect(broker, None)
    assert tls_alert(broker, None) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert tls_alert(broker, pki.gateway(UNIT, "GW0001")) is None    # the control: accepted


def test_certificate_from_another_ca_is_refused(broker: Broker, pki: Pki,
                                                 tmp_path: Path) -> None:
    stranger = make_pki(tmp_path / "other-ca").gateway(UNIT, "GW0001")
    with pytest.raises(ConnectRefused):
        MqttClient.connect(broker, stranger)
    assert tls_alert(broker, stranger) == "TLSV1_ALERT_UNKNOWN_CA"
    assert "certificate verify failed" in broker.log_text()


def test_expired_client_certificate_is_refused(broker: Broker, pki: Pki) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = pki.client(f"{UNIT}/GW0001", not_before=now - dt.timedelta(days=10),
                         not_after=now - dt.timedelta(days=1))
    with pytest.raises(ConnectRefused):
        MqttClient.connect(broker, expired)
    assert tls_alert(broker, expired) == "SSLV3_ALERT_CERTIFICATE_EXPIRED"


def test_revoked_certificate_is_refused_after_restart(broker: Broker, pki: Pki) -> None:
    revoked, kept = pki.gateway(UNIT, "GW0001"), pki.gateway(UNIT, "GW0002")
    MqttClient.connect(broker, revoked).close()
    pki.revoke(revoked)
    broker.restart()                          # Mosquitto reads its crlfile at start
    with pytest.raises(ConnectRefused):
        MqttClient.connect(broker, revoked)
    assert tls_alert(broker, revoked) == "SSLV3_ALERT_CERTIFICATE_REVOKED"
    MqttClient.connect(broker, kept).close()


def test_wrong_host_name_fails_verification(tmp_path: Path) -> None:
    only_localhost = make_pki(tmp_path / "pki", hosts=("localhost",))
    with Broker(only_localhost, tmp_path / "b") as b:
        files = only_localhost.gateway(UNIT, "GW0001")
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            MqttClient.connect(b, files)                      # 127.0.0.1 is not in the SAN
        MqttClient.connect(b, files, host="localhost").close()  # the control: the name is


def test_server_of_another_ca_fails_verification(broker: Broker, pki: Pki,
                                                 tmp_path: Path) -> None:
    stranger_ca = make_pki(tmp_path / "other-ca").ca_path
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        MqttClient.connect(broker, pki.gateway(UNIT, "GW0001"), ca_path=stranger_ca)


def test_retained_message_and_persistent_session_survive_a_restart(
        broker: Broker, pki: Pki) -> None:
    collector_files = pki.collector()
    # clean_start=False from the first connection: see the next test for why.
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=False,
                            session_expiry=3600) as collector:
        collector.subscribe("kemon/v1/+/+/up/#")
    with MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gateway:
        gateway.publish(up("GW0001", "status"), b"online", retain=True)
        for i in range(5):
            gateway.publish(up("GW0001"), f"r{i}".encode())   # queued for the offline session
    old_port = broker.port
    broker.restart()
    assert broker.port == old_port
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=False,
                            session_expiry=3600) as collector:
        assert collector.session_present
        got = [collector.expect() for _ in range(6)]
    assert [(m.topic, m.payload) for m in got] == \
        [(up("GW0001", "status"), b"online")] + [(up("GW0001"), f"r{i}".encode())
                                                  for i in range(5)]
    with MqttClient.connect(broker, collector_files, "collector-2") as fresh:
        fresh.subscribe("kemon/v1/+/+/up/status")
        msg = fresh.expect()
        assert (msg.payload, msg.retain) == (b"online", True)


def test_mosquitto_2_0_11_persists_only_sessions_opened_without_clean_start(
        broker: Broker, pki: Pki) -> None:
    """A quirk the uplink and the collector must respect: an MQTT 5 session opened with
    clean_start=1 and a session expiry survives a disconnect, but NOT a broker restart —
    Mosquitto 2.0.11 writes to its database only clients whose CONNECT had clean_start=0.
    So: always connect with clean_start=False (and a session expiry) when the session matters.
    """
    collector_files = pki.collector()
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=True,
                            session_expiry=3600) as collector:
        collector.subscribe("kemon/v1/+/+/up/#")
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=False,
                            session_expiry=3600) as collector:
        assert collector.session_present                  # kept across a disconnect ...
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=True,
                            session_expiry=3600) as collector:
        collector.subscribe("kemon/v1/+/+/up/#")
    with MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gateway:
        gateway.publish(up("GW0001"), b"queued")
    broker.restart()
    with MqttClient.connect(broker, collector_files, "collector-1", clean_start=False,
                            session_expiry=3600) as collector:
        assert not collector.session_present              # ... but not across a restart
        assert drain(collector) == []


def test_without_session_expiry_nothing_is_kept(broker: Broker, pki: Pki) -> None:
    """The control for the test above: the session is kept because we asked for it."""
    collector_files = pki.collector()
    with MqttClient.connect(broker, collector_files, "collector-1") as collector:
        collector.subscribe("kemon/v1/+/+/up/#")
    with MqttClient.connect(broker, pki.gateway(UNIT, "GW0001")) as gateway:
        gateway.publish(up("GW0001"), b"lost")
    with MqttClient.connect(broker, collector_files, "collector-1",
                            clean_start=False) as collector:
        assert not collector.session_present
        assert drain(collector) == []


def test_stop_kill_and_restart_leave_no_process(pki: Pki, tmp_path: Path) -> None:
    b = Broker(pki, tmp_path / "b")
    with b:
        first = b.proc
        assert first is not None and first.pid in mosquitto_pids()
        b.restart(hard=True)
        assert first.poll() == -9
        assert b.proc is not None and b.proc.pid != first.pid
        MqttClient.connect(b, pki.gateway(UNIT, "GW0001")).close()
        second = b.proc
    assert not b.running
    assert second.poll() == 0                       # SIGTERM: a clean exit
    assert not {first.pid, second.pid} & mosquitto_pids()
    assert "mosquitto version 2.0.11 terminating" in b.log_text()


def test_a_broker_that_cannot_start_says_why(pki: Pki, tmp_path: Path) -> None:
    b = Broker(pki, tmp_path / "b", extra_config="no_such_option true")
    with pytest.raises(BrokerError, match="no_such_option"):
        b.start()
    assert not b.running


def test_port_in_use_is_reported(broker: Broker, pki: Pki, tmp_path: Path) -> None:
    clash = Broker(pki, tmp_path / "clash", port=broker.port)
    with pytest.raises(BrokerError, match="exited"):
        clash.start()


def test_no_mosquitto_survives_a_session(tmp_path: Path) -> None:
    """A pytest run that starts brokers and ends leaves none behind (atexit and fixtures)."""
    test = tmp_path / "test_inner.py"
    test.write_text(
        "from tests.brokers import broker_fixture, pki_fixture  # noqa\n"
        "def test_a(broker):\n"
        "    assert broker.running\n"
        "    open('pid', 'w').write(str(broker.proc.pid))\n"
        "def test_b(pki, tmp_path):\n"
        "    from tests.brokers import Broker\n"
        "    b = Broker(pki, tmp_path / 'b'); b.start()\n"   # never stopped by the test
        "    open('pid2', 'w').write(str(b.proc.pid))\n",
        encoding="utf-8")
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [str(root / ".venv/bin/python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(test)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    pids = {int((tmp_path / name).read_text()) for name in ("pid", "pid2")}
    assert not pids & {p.pid for p in psutil.process_iter()
                       if p.status() != psutil.STATUS_ZOMBIE}
