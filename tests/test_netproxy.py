"""The partition proxy: forwards faithfully, goes silent without closing anything, recovers with
the stream intact, drops connections on demand — and a real MQTT client behind it notices a
silent partition only through its keepalive, as on a mobile link.
"""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.brokers import Broker, MqttClient, Pki, broker_fixture, pki_fixture  # noqa: F401  (the fixtures)
from tests.conftest import UNIT
from tests.netproxy import ProxyError, TcpProxy


class EchoServer:
    """A TCP server on a free port that echoes, counts what it receives, and can push."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.conns: queue.Queue[socket.socket] = queue.Queue()
        self.received = 0
        self.eofs = 0
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._open.append(conn)
            self.conns.put(conn)
            t = threading.Thread(target=self._echo, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _echo(self, conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                self.received += len(data)
                conn.sendall(data)
        except OSError:
            return
        self.eofs += 1

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)   # wakes the accepting thread
        except OSError:
            pass
        self.listener.close()
        for conn in self._open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        for t in self._threads:
            t.join(5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.port) as p:
        yield p


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5)
    sock.settimeout(5)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        data = sock.recv(n - got)
        if not data:
            raise EOFError(f"closed after {got} of {n} bytes")
        chunks.append(data)
        got += len(data)
    return b"".join(chunks)


def nothing_arrives(sock: socket.socket, seconds: float = 0.4) -> bool:
    """True when the socket stays open and silent (a timeout, not EOF, not data)."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    raise AssertionError(f"expected silence, got {'EOF' if not data else data!r}")


def wait_until(condition, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_forwards_both_ways_intact(proxy: TcpProxy, echo: EchoServer) -> None:
    payload = os.urandom(1_000_000)
    with connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join()
    assert proxy.bytes_up == proxy.bytes_down == len(payload)
    wait_until(lambda: proxy.connections == 0 and echo.eofs == 1)   # close passes through
    assert proxy.accepted == 1


def test_blackhole_holds_both_directions_and_keeps_connections_open(
        proxy: TcpProxy, echo: EchoServer) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"before")
        assert recv_exactly(sock, 6) == b"before"
        server_side = echo.conns.get(timeout=5)

        proxy.blackhole()
        assert proxy.blackholed
        sock.sendall(b"client->server during the black hole")
        server_side.sendall(b"server->client")
        assert nothing_arrives(sock)                 # no echo, no push, no EOF
        assert echo.received == 6                    # the server saw nothing new
        assert proxy.connections == 1
        assert proxy.bytes_up == proxy.bytes_down == 6

        proxy.resume()                               # the held bytes arrive
        push, echoed = b"server->client", b"client->server during the black hole"
        # The push and the echo travel separately; each arrives whole, in either order.
        assert recv_exactly(sock, len(push) + len(echoed)) in (push + echoed, echoed + push)
        sock.sendall(b"after")
        assert recv_exactly(sock, 5) == b"after"
    assert echo.received == len(b"before" + echoed + b"after")


def test_blackhole_then_resume_streams_ordered_bytes(proxy: TcpProxy) -> None:
    """Held bytes are neither lost nor reordered: a counter sequence survives three partitions."""
    with connect(proxy) as sock:
        for round_ in range(3):
            chunk = bytes((round_ * 50 + i) % 256 for i in range(50_000))
            proxy.blackhole()
            sock.sendall(chunk)
            assert nothing_arrives(sock, 0.1)
            proxy.resume()
            assert recv_exactly(sock, len(chunk)) == chunk


def test_a_connection_made_during_a_blackhole_reaches_the_server_after_resume(
        proxy: TcpProxy, echo: EchoServer) -> None:
    proxy.blackhole()
    with connect(proxy) as sock:                      # the kernel accepts: no refusal
        sock.sendall(b"hello")
        assert nothing_arrives(sock)
        assert echo.conns.empty()                     # the server never saw a SYN
        proxy.resume()
        assert recv_exactly(sock, 5) == b"hello"


def test_a_close_during_a_blackhole_is_not_seen_until_resume(
        proxy: TcpProxy, echo: EchoServer) -> None:
    sock = connect(proxy)
    sock.sendall(b"x")
    assert recv_exactly(sock, 1) == b"x"
    proxy.blackhole()
    sock.close()
    time.sleep(0.3)
    assert echo.eofs == 0                             # no FIN got through
    proxy.resume()
    wait_until(lambda: echo.eofs == 1 and proxy.connections == 0)


def test_drop_all_closes_both_sides_and_new_connections_work(
        proxy: TcpProxy, echo: EchoServer) -> None:
    socks = [connect(proxy) for _ in range(3)]
    for s in socks:
        s.sendall(b"1")
        assert recv_exactly(s, 1) == b"1"
    assert proxy.drop_all() == 3
    for s in socks:
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        s.close()
    wait_until(lambda: echo.eofs == 3)
    assert proxy.connections == 0
    with connect(proxy) as again:
        again.sendall(b"2")
        assert recv_exactly(again, 1) == b"2"


def test_drop_all_during_a_blackhole(proxy: TcpProxy, echo: EchoServer) -> None:
    proxy.blackhole()
    sock = connect(proxy)                             # held, never connected upstream
    wait_until(lambda: proxy.connections == 1)
    assert proxy.drop_all() == 1
    assert sock.recv(1) == b""
    sock.close()
    proxy.resume()
    time.sleep(0.1)
    assert echo.conns.empty()


def test_unreachable_target_closes_the_client() -> None:
    dead = socket.create_server(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()                                       # nothing listens there now
    with TcpProxy(port) as proxy, connect(proxy) as sock:
        assert sock.recv(1) == b""


def test_stop_closes_everything_and_controls_then_fail(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.port)
    proxy.start()
    port = proxy.port
    sock = connect(proxy)
    proxy.blackhole()
    proxy.stop()
    assert sock.recv(1) == b""
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    with pytest.raises(ProxyError):
        proxy.blackhole()
    assert not any(t.name == "netproxy" for t in threading.enumerate())


def test_listening_on_a_busy_port_is_an_error(proxy: TcpProxy, echo: EchoServer) -> None:
    with pytest.raises(ProxyError, match="could not listen"):
        TcpProxy(echo.port, listen_port=proxy.port).start()


def test_usable_from_asyncio(proxy: TcpProxy) -> None:
    async def main() -> None:
        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        proxy.blackhole()                # a short blocking call from inside a running loop
        writer.write(b"pong")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        proxy.resume()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"pong"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


@pytest.mark.slow
def test_mqtt_client_notices_a_silent_partition_only_by_keepalive(
        broker: Broker, pki: Pki) -> None:
    """The reason this proxy exists: nothing closes, the client learns of the partition from
    a missing PINGRESP (paho: about 2 x keepalive); the broker drops the connection on its own
    keepalive check (MQTT 5 §3.1.2.10 says 1.5 x keepalive; Mosquitto 2.0.11 took 5-6 s with a
    1 s keepalive here); after the partition heals, reconnecting through the proxy works."""
    files = pki.gateway(UNIT, "GW0001")
    with TcpProxy(broker.port) as proxy:
        client = MqttClient.connect(broker, files, "gw-partition", port=proxy.port, keepalive=1)
        try:
            assert not client.publish(f"kemon/v1/{UNIT}/GW0001/up/data", b"1").is_failure
            proxy.blackhole()
            started = time.monotonic()
            wait_until(lambda: not client.connected, timeout=6)
            detected = time.monotonic() - started
            assert proxy.connections == 1             # the proxy closed nothing
            assert 0.9 < detected < 5, detected
            wait_until(lambda: "gw-partition has exceeded timeout" in broker.log_text(),
                       timeout=10)
        finally:
            client.close()
        proxy.resume()
        MqttClient.connect(broker, files, "gw-partition", port=proxy.port).close()
