"""A real Mosquitto for tests: mutual TLS, certificate CN as username, Kemon's topic ACL,
persistence — plus a small synchronous paho-mqtt client to talk to it.

Use the fixtures ``pki`` and ``broker`` (register this module as a plugin, or import them), or
the classes directly::

    pki = make_pki(tmp_path / "pki")                 # CA, server cert for 127.0.0.1 + localhost,
    with Broker(pki, tmp_path / "broker") as broker: # an empty CRL
        gw = pki.gateway(UNIT, "GW0001")             # ClientFiles: CN "<unit>/GW0001"
        col = pki.collector("test")                  # CN "collector-test" (the broker's ACL
        with MqttClient.connect(broker, col) as c:   # grants the collector names it was given)
            c.subscribe("kemon/v1/+/+/up/#")
            ...
        broker.restart()                              # same port; SIGTERM saves the database

The broker's ACL (``acl_text``): a gateway may write ``kemon/v1/<unit>/<gateway>/up/#`` and read
``kemon/v1/<unit>/<gateway>/down/#``; a collector reads ``kemon/v1/+/+/up/#`` and writes
``kemon/v1/+/+/down/#``; nothing else is allowed.

Every started broker is stopped by its context manager or fixture; an ``atexit`` hook kills any
that a crashed test left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import logging
import os
import queue
import signal
import socket
import ssl
import subprocess
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
import psutil  # type: ignore[import-untyped]
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from provisioning import (
    collector_common_name,
    gateway_common_name,
    make_ca,
    make_client_cert,
    make_collector_cert,
    make_crl,
    make_gateway_cert,
    make_server_cert,
    write_cert,
    write_crl,
    write_key,
)
from provisioning._mosquitto import mosquitto_acl

__all__ = [
    "MOSQUITTO",
    "Broker",
    "BrokerError",
    "ClientFiles",
    "ConnectRefused",
    "Message",
    "MqttClient",
    "Pki",
    "acl_text",
    "broker_fixture",
    "free_port",
    "make_pki",
    "pki_fixture",
    "tls_alert",
    "tls_context",
]

log = logging.getLogger(__name__)

MOSQUITTO = "/usr/sbin/mosquitto"
DEFAULT_COLLECTORS = ("test",)
_live: set[subprocess.Popen[bytes]] = set()


class BrokerError(RuntimeError):
    """The broker did not start (the message carries its stderr and log)."""


class ConnectRefused(ConnectionError):
    """An MQTT connection did not reach CONNACK success; ``reason`` says what happened."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- certificates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ClientFiles:
    """A client identity on disk: what a gateway's or collector's configuration points at."""

    common_name: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    serial: int


@dataclass
class Pki:
    """A test certificate authority in ``dir`` and the broker's server identity."""

    dir: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    crl_path: Path
    hosts: tuple[str, ...]
    revoked: set[int] = field(default_factory=set)

    def client(self, cn: str, *, not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None) -> ClientFiles:
        """A client certificate with common name ``cn`` (any text; the broker's username)."""
        key, cert = make_client_cert(self.ca_key, self.ca_cert, cn, not_before=not_before,
                                     not_after=not_after)
        return self._write(cn, key, cert)

    def gateway(self, unit: str, gateway: str) -> ClientFiles:
        """A gateway identity, CN ``<unit>/<gateway>``."""
        key, cert = make_gateway_cert(self.ca_key, self.ca_cert, unit, gateway)
        return self._write(gateway_common_name(unit, gateway), key, cert)

    def collector(self, name: str = DEFAULT_COLLECTORS[0]) -> ClientFiles:
        """A collector identity, CN ``collector-<name>``."""
        key, cert = make_collector_cert(self.ca_key, self.ca_cert, name)
        return self._write(collector_common_name(name), key, cert)

    def revoke(self, *clients: ClientFiles) -> None:
        """Add the clients to the CRL (a running broker reads it at its next start)."""
        self.revoked.update(c.serial for c in clients)
        write_crl(self.crl_path, make_crl(self.ca_key, self.ca_cert, self.revoked,
                                          crl_number=len(self.revoked) + 1))

    def _write(self, cn: str, key: ec.EllipticCurvePrivateKey,
               cert: x509.Certificate) -> ClientFiles:
        folder = self.dir / "clients"
        folder.mkdir(exist_ok=True)
        stem = f"{cn.replace('/', '_')}-{cert.serial_number:x}"[:100]
        cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
        write_cert(cert_path, cert)
        write_key(key_path, key)
        return ClientFiles(cn, cert_path, key_path, self.ca_path, cert.serial_number)


def make_pki(directory: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
             *, ca_name: str = "Kemon Test CA") -> Pki:
    """A CA (valid from 30 days ago, so certificates dated in the past chain to it), a server
    certificate for ``hosts`` and an empty CRL, written into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(ca_name, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=30))
    server_key, server_cert = make_server_cert(ca_key, ca_cert, list(hosts))
    pki = Pki(dir=directory, ca_key=ca_key, ca_cert=ca_cert, ca_path=directory / "ca.pem",
              server_cert_path=directory / "server.pem", server_key_path=directory / "server.key",
              crl_path=directory / "ca.crl", hosts=tuple(hosts))
    write_cert(pki.ca_path, ca_cert)
    write_cert(pki.server_cert_path, server_cert)
    write_key(pki.server_key_path, server_key)
    write_crl(pki.crl_path, make_crl(ca_key, ca_cert, ()))
    return pki


def tls_context(ca_path: Path, client: ClientFiles | None = None) -> ssl.SSLContext:
    """A client TLS context that verifies the server (CA and host name), TLS 1.2 or later, and
    presents ``client``'s certificate if given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_path))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        ctx.load_cert_chain(str(client.cert_path), str(client.key_path))
    return ctx


def tls_alert(broker: Broker, files: ClientFiles | None, *, host: str | None = None,
              ca_path: Path | None = None, timeout: float = 1.0) -> str | None:
    """Open a bare TLS connection and wait for the server's verdict on our certificate.

    Returns the alert OpenSSL reports (e.g. ``SSLV3_ALERT_CERTIFICATE_EXPIRED``,
    ``TLSV1_ALERT_UNKNOWN_CA``, ``TLSV13_ALERT_CERTIFICATE_REQUIRED``), or None when the server
    accepted the handshake and is waiting for MQTT's CONNECT. With TLS 1.3 the server judges the
    client certificate after the client's handshake has finished, so the alert only shows on the
    first read — where paho reports just "Unspecified error". Our own verification of the server
    raises ``ssl.SSLCertVerificationError`` as usual.
    """
    ctx = tls_context(ca_path or broker.pki.ca_path, files)
    with socket.create_connection((host or broker.host, broker.port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host or broker.host) as tls:
        try:
            tls.recv(1)
        except ssl.SSLCertVerificationError:
            raise
        except ssl.SSLError as exc:
            return str(exc.reason)
        except TimeoutError:
            return None
    return None


# --- the broker -----------------------------------------------------------------------------

def acl_text(collectors: Iterable[str] = DEFAULT_COLLECTORS,
             relays: Iterable[str] = ()) -> str:
    """Kemon's topic ACL for Mosquitto, as ``kemon provision broker`` writes it (``%u`` is the
    certificate CN, ``<unit>/<gateway>``); ``relays`` may publish ``up/#`` into this broker."""
    return mosquitto_acl(collectors, relays)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Broker:
    """A Mosquitto process with TLS, client certificates, the ACL and persistence.

    ``port`` None picks a free one, kept across ``restart``. ``collectors`` are the collector
    names (CN ``collector-<name>``) the ACL grants; ``relays`` those it lets relay into it.
    ``autosave_interval`` (seconds) bounds what a ``kill`` loses: a SIGTERM (``stop``) always
    saves everything.
    """

    def __init__(self, pki: Pki, directory: Path, port: int | None = None, *,
                 collectors: Iterable[str] = DEFAULT_COLLECTORS, relays: Iterable[str] = (),
                 host: str = "127.0.0.1",
                 autosave_interval: int = 5, max_queued_messages: int = 100_000,
                 max_inflight_messages: int = 100, extra_config: str = "") -> None:
        self.pki = pki
        self.dir = directory
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.collectors = tuple(collectors)
        self.relays = tuple(relays)
        self.autosave_interval = autosave_interval
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.extra_config = extra_config
        self.config_path = directory / "mosquitto.conf"
        self.acl_path = directory / "acl"
        self.log_path = directory / "mosquitto.log"
        self.stderr_path = directory / "mosquitto.stderr"
        self.data_dir = directory / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtts://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def config_text(self) -> str:
        # Keys as documented in mosquitto.conf(5) of 2.0.11. tls_version is the *minimum* since
        # 2.0 (1.6 and earlier: the only version).
        return "\n".join([
            "# Written by tests/brokers.py",
            "per_listener_settings false",
            "user root",                   # HINTS.md: else it drops to 'mosquitto' and cannot
                                           # read the 0700 pytest temporary directory
            "allow_anonymous false",
            f"acl_file {self.acl_path}",
            "persistence true",
            f"persistence_location {self.data_dir}/",     # must end with a slash
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "set_tcp_nodelay true",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
            "",
            f"listener {self.port} {self.host}",
            f"cafile {self.pki.ca_path}",
            f"certfile {self.pki.server_cert_path}",
            f"keyfile {self.pki.server_key_path}",
            f"crlfile {self.pki.crl_path}",
            "require_certificate true",
            "use_identity_as_username true",
            "tls_version tlsv1.2",
            self.extra_config,
            "",
        ])

    def start(self, timeout: float = 10) -> None:
        """Write the configuration, start Mosquitto, return once it completes a TLS handshake."""
        if self.running:
            raise BrokerError("broker already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.acl_path.write_text(acl_text(self.collectors, self.relays), encoding="utf-8")
        self.config_path.write_text(self.config_text(), encoding="utf-8")
        with self.stderr_path.open("ab") as err:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config_path)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        _live.add(self.proc)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        log.info("mosquitto pid %d on %s", self.proc.pid, self.url)

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        probe = self.pki.client("probe")     # no ACL rights; only completes the handshake
        ctx = tls_context(self.pki.ca_path, probe)
        ctx.check_hostname = False           # the probe is about readiness, not names
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self.proc.returncode}:\n"
                                  f"{self.stderr_text()}\n{self.log_text()}")
            try:
                # Our process must own the listening socket: a TLS answer alone could come from
                # another broker on the same port while ours is failing with "Address in use".
                if not self._listening():
                    raise ConnectionRefusedError
                with socket.create_connection((self.host, self.port), timeout=1) as raw, \
                        ctx.wrap_socket(raw):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise BrokerError(f"mosquitto not accepting TLS on {self.url} after "
                                      f"{timeout} s:\n{self.log_text()}") from None
                time.sleep(0.05)

    def _listening(self) -> bool:
        assert self.proc is not None
        try:
            conns = psutil.Process(self.proc.pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in conns)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM (Mosquitto saves its database) and wait; SIGKILL if it does not exit."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        finally:
            _live.discard(proc)

    def kill(self) -> None:
        """SIGKILL: what was not yet autosaved is lost, as in a crash."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
        finally:
            _live.discard(proc)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with ``hard``) and start again on the same port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_live):
        with contextlib.suppress(OSError):
            proc.kill()
            proc.wait(5)


# --- a small synchronous MQTT 5 client ------------------------------------------------------

@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...] = ()


class MqttClient:
    """paho-mqtt 2.x (MQTT 5, TLS) with blocking helpers, for tests.

    Incoming messages land in ``messages`` (a queue); ``puback_reasons`` maps a publish's mid to
    the reason code of its PUBACK (Mosquitto answers "Not authorized" to an ACL-denied QoS 1).
    """

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                protocol=MQTTProtocolVersion.MQTTv5, reconnect_on_failure=False)
        self.messages: queue.Queue[Message] = queue.Queue()
        self.puback_reasons: dict[int, ReasonCode] = {}
        self.session_present = False
        self._connected = threading.Event()
        self._done = threading.Event()
        self._reason = "no answer"
        self._lock = threading.Lock()
        self._published: dict[int, threading.Event] = {}
        self.paho.on_connect = self._on_connect
        self.paho.on_connect_fail = self._on_connect_fail
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_publish = self._on_publish

    @classmethod
    def connect(cls, broker: Broker, files: ClientFiles | None, client_id: str | None = None,
                *, host: str | None = None, port: int | None = None,
                ca_path: Path | None = None,
                clean_start: bool = True, session_expiry: int = 0, keepalive: int = 30,
                timeout: float = 5) -> MqttClient:
        """Connect with ``files``' certificate (None: none), wait for CONNACK, or raise
        ``ConnectRefused``/``ssl.SSLError`` (server verification happens in ``connect``).
        ``host``/``port`` override the broker's address (e.g. to go through a proxy)."""
        client = cls(client_id or f"test-{os.getpid()}-{time.monotonic_ns()}")
        client.paho.tls_set_context(tls_context(ca_path or broker.pki.ca_path, files))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = session_expiry
        try:
            client.paho.connect(host or broker.host, port or broker.port, keepalive=keepalive,
                                clean_start=clean_start, properties=props)
        except OSError as exc:
            _close_sockets_left_in(exc)
            raise
        client.paho.loop_start()
        if not client._done.wait(timeout):
            client.close()
            raise ConnectRefused(f"no CONNACK within {timeout} s")
        if not client._connected.is_set():
            client.close()
            raise ConnectRefused(client._reason)
        return client

    def _on_connect(self, _c: paho.Client, _u: Any, flags: paho.ConnectFlags,
                    reason: ReasonCode, _p: Properties | None) -> None:
        if reason.is_failure:
            self._reason = f"CONNACK {reason}"
        else:
            self.session_present = flags.session_present
            self._connected.set()
        self._done.set()

    def _on_connect_fail(self, _c: paho.Client, _u: Any) -> None:
        self._reason = "connection failed"
        self._done.set()

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: paho.DisconnectFlags,
                       reason: ReasonCode, _p: Properties | None) -> None:
        if not self._connected.is_set():
            self._reason = f"disconnected before CONNACK: {reason}"
        self._connected.clear()
        self._done.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        pairs = getattr(msg.properties, "UserProperty", None) or ()
        self.messages.put(Message(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain),
                                  tuple((str(k), str(v)) for k, v in pairs)))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, reason: ReasonCode,
                    _p: Properties) -> None:
        with self._lock:
            self.puback_reasons[mid] = reason
            self._published.setdefault(mid, threading.Event()).set()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False,
                timeout: float = 5) -> ReasonCode:
        """Publish and (QoS 1/2) wait for the acknowledgement; return its reason code."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return ReasonCode(PacketTypes.PUBACK, "Success")
        with self._lock:
            event = self._published.setdefault(info.mid, threading.Event())
        if not event.wait(timeout):
            raise TimeoutError(f"no acknowledgement for {topic} within {timeout} s")
        return self.puback_reasons[info.mid]

    def subscribe(self, topic_filter: str, qos: int = 1, timeout: float = 5) -> None:
        """Subscribe and wait for SUBACK (Mosquitto logs it; delivery is what the ACL checks)."""
        done = threading.Event()
        granted: list[ReasonCode] = []

        def on_subscribe(_c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode],
                         _p: Properties) -> None:
            granted.extend(codes)
            done.set()

        self.paho.on_subscribe = on_subscribe
        self.paho.subscribe(topic_filter, qos=qos)
        if not done.wait(timeout):
            raise TimeoutError(f"no SUBACK for {topic_filter} within {timeout} s")
        if any(code.is_failure for code in granted):
            raise ConnectionError(f"subscription to {topic_filter} refused: {granted}")

    def expect(self, timeout: float = 5) -> Message:
        """The next message, or ``queue.Empty`` after ``timeout``."""
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        """DISCONNECT (a persistent session stays on the broker) and stop the network thread."""
        with contextlib.suppress(Exception):
            self.paho.disconnect()
        self.paho.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _close_sockets_left_in(exc: BaseException) -> None:
    """paho-mqtt 2.2 does not close its socket when the TLS handshake fails in ``connect``
    (``_ssl_wrap_socket`` lets the exception escape with the socket only in its frame); close
    the sockets those frames hold, so no ResourceWarning surfaces later in an unrelated test."""
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for value in frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()


# --- fixtures -------------------------------------------------------------------------------

@pytest.fixture(name="pki")
def pki_fixture(tmp_path: Path) -> Pki:
    """A fresh test CA with a server certificate for 127.0.0.1 and localhost."""
    return make_pki(tmp_path / "pki")


@pytest.fixture(name="broker")
def broker_fixture(pki: Pki, tmp_path: Path) -> Iterator[Broker]:
    """A running Mosquitto (TLS, client certificates, Kemon ACL, persistence), stopped after."""
    b = Broker(pki, tmp_path / "broker")
    try:
        b.start()
        yield b
    finally:
        b.stop()
