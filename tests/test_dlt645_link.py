"""Dlt645Driver against the DL/T 645 simulator over real links: TCP on loopback and a socat
pty pair. Values are checked against ``point_value`` at the simulator's (fixed) clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway import _dlt645 as codec
from gateway._model import BusConfig, MeterConfig, PointConfig
from gateway._profiles import load_profile
from gateway.drivers._base import MeterExceptionReply, MeterFrameError, MeterTimeout
from gateway.drivers._dlt645 import Dlt645Driver
from gateway.sim._dlt645_sim import serve_dlt645
from gateway.sim._values import SimMeter, point_value

TIMEOUT = 0.3
T = 1_780_000_000.0

POINTS = (
    PointConfig(code="e", di="00010000", counter=True, unit="kWh", energy="electricity"),
    PointConfig(code="e_rev", di="00020000", counter=True, unit="kWh"),
    PointConfig(code="ua", di="02010100", unit="V"),
    PointConfig(code="ub", di="0201FF00", field="b", unit="V"),
    PointConfig(code="uc", di="0201FF00", field="c", unit="V"),
    PointConfig(code="ia", di="02020100", unit="A"),
    PointConfig(code="p", di="02030000", unit="W", scale=1000.0),
)
# value tolerance: half the format's last digit, times scale
TOLERANCE = {"e": 0.005, "e_rev": 0.005, "ua": 0.05, "ub": 0.05, "uc": 0.05, "ia": 0.0005,
             "p": 0.00005 * 1000}

SIMS = [
    SimMeter("000000000001", POINTS),
    SimMeter("000000000002", POINTS, fault="silent"),
    SimMeter("000000000003", POINTS, fault="garble"),
    SimMeter("000000000004", POINTS, fault="exception"),
]


def meter(address: str, points: tuple[PointConfig, ...] = POINTS) -> MeterConfig:
    return MeterConfig(name=f"m{address[-1]}", bus="b", address=address, points=points)


@asynccontextmanager
async def simulated_bus(transport: str, pty: tuple[str, str] | None,
                        sims: list[SimMeter]) -> AsyncIterator[Dlt645Driver]:
    ready, bound = asyncio.Event(), []
    if transport == "tcp":
        server = asyncio.create_task(serve_dlt645(sims, port=0, ready=ready, bound=bound,
                                                  clock=lambda: T))
    else:
        assert pty is not None
        server = asyncio.create_task(serve_dlt645(sims, device=pty[1], ready=ready,
                                                  clock=lambda: T))
    driver: Dlt645Driver | None = None
    try:
        await asyncio.wait_for(ready.wait(), 5)
        if transport == "tcp":
            bus = BusConfig(name="b", kind="dlt645", host="127.0.0.1", tcp_port=bound[0],
                            timeout=TIMEOUT)
        else:
            assert pty is not None
            bus = BusConfig(name="b", kind="dlt645", port=pty[0], baudrate=2400, parity="E",
                            timeout=TIMEOUT)
        driver = Dlt645Driver(bus)
        await driver.connect()
        yield driver
    finally:
        if driver is not None:
            await driver.close()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


def run(transport: str, request: pytest.FixtureRequest,
        body: Callable[[Dlt645Driver], Coroutine[Any, Any, None]],
        sims: list[SimMeter] = SIMS) -> None:
    pty = request.getfixturevalue("pty_pair") if transport == "serial" else None

    async def main() -> None:
        async with simulated_bus(transport, pty, sims) as driver:
            await body(driver)

    asyncio.run(main())


TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "serial"])


@TRANSPORTS
def test_round_trip_values(transport: str, request: pytest.FixtureRequest) -> None:
    async def body(driver: Dlt645Driver) -> None:
        result = await driver.read_meter(meter("000000000001"))
        assert result.errors == {}
        assert result.requests == 6              # ub and uc share one block request
        for point in POINTS:
            assert result.values[point.code] == pytest.approx(point_value(point, T),
                                                              abs=TOLERANCE[point.code])
    run(transport, request, body)


@TRANSPORTS
def test_faults_and_recovery(transport: str, request: pytest.FixtureRequest) -> None:
    async def body(driver: Dlt645Driver) -> None:
        started = time.monotonic()
        with pytest.raises(MeterTimeout):
            await driver.read_meter(meter("000000000002"))
        elapsed = time.monotonic() - started
        assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.25   # one transaction, not one per DI
        good = await driver.read_meter(meter("000000000001"))
        assert len(good.values) == len(POINTS)
        with pytest.raises(MeterFrameError, match="checksum"):
            await driver.read_meter(meter("000000000003"))
        good = await driver.read_meter(meter("000000000001"))
        assert good.values["e"] == pytest.approx(point_value(POINTS[0], T), abs=0.005)
        with pytest.raises(MeterExceptionReply) as info:
            await driver.read_meter(meter("000000000004"))
        assert info.value.code == codec.ERR_OTHER
        good = await driver.read_meter(meter("000000000001"))
        assert len(good.values) == len(POINTS)
        with pytest.raises(MeterTimeout):                  # nobody has this address
            await driver.read_meter(meter("000000000009"))
    run(transport, request, body)


@TRANSPORTS
def test_unsupported_di_is_a_point_error(transport: str, request: pytest.FixtureRequest) -> None:
    extra = (*POINTS[:2], PointConfig(code="f", di="02800002", unit="Hz"))

    async def body(driver: Dlt645Driver) -> None:
        # the simulated meter has no 02800002 point, so it answers "no requested data"
        result = await driver.read_meter(meter("000000000001", extra))
        assert set(result.values) == {"e", "e_rev"}
        error = result.errors["f"]
        assert isinstance(error, MeterExceptionReply) and error.code == codec.ERR_NO_DATA
        only_bad = await asyncio.gather(driver.read_meter(meter("000000000001", extra[2:])),
                                        return_exceptions=True)
        assert isinstance(only_bad[0], MeterExceptionReply)
    run(transport, request, body, [SimMeter("000000000001", POINTS)])


@TRANSPORTS
def test_read_address(transport: str, request: pytest.FixtureRequest) -> None:
    async def body(driver: Dlt645Driver) -> None:
        assert await driver.read_address() == "000000000001"
    run(transport, request, body,
        [SimMeter("000000000002", POINTS, fault="silent"), SimMeter("000000000001", POINTS)])


def test_lost_tcp_link_is_a_timeout_then_reconnects() -> None:
    async def main() -> None:
        ready, bound = asyncio.Event(), []
        server = asyncio.create_task(serve_dlt645(SIMS, port=0, ready=ready, bound=bound))
        await ready.wait()
        bus = BusConfig(name="b", kind="dlt645", host="127.0.0.1", tcp_port=bound[0],
                        timeout=TIMEOUT)
        driver = Dlt645Driver(bus)
        try:
            await driver.read_meter(meter("000000000001"))
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)
            with pytest.raises(MeterTimeout, match="link"):
                await driver.read_meter(meter("000000000001"))
            ready = asyncio.Event()
            server = asyncio.create_task(serve_dlt645(SIMS, port=bound[0], ready=ready))
            await ready.wait()
            result = await driver.read_meter(meter("000000000001"))
            assert len(result.values) == len(POINTS)
        finally:
            await driver.close()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    asyncio.run(main())


def test_shipped_profile_reads_through_driver() -> None:
    profile = load_profile("dlt645_3phase", Path("."))
    points = tuple(PointConfig(**{**fields, "code": f"m.{fields['key']}"})
                   for _, fields in profile.points)
    assert {p.di for p in points} >= {"00010000", "02010100", "02020100", "02030000"}

    async def body(driver: Dlt645Driver) -> None:
        result = await driver.read_meter(meter("000000000007", points))
        assert result.errors == {}
        for point in points:
            fmt = codec.data_item(point.di or "").decimals
            assert result.values[point.code] == pytest.approx(
                point_value(point, T), abs=0.5 * 10**-fmt * point.scale + 1e-9), point.key

    async def main() -> None:
        async with simulated_bus("tcp", None, [SimMeter("000000000007", points)]) as driver:
            await body(driver)

    asyncio.run(main())


# --------------------------------------------------------------------------- hostile lines

REPLY = codec.encode_read_reply("000000000001", "00010000",
                                codec.encode_values("00010000", [1234.56]))


def _corrupt(frame: bytes) -> bytes:
    bad = bytearray(frame)
    bad[-2] ^= 0x01
    return bytes(bad)


async def _scripted_meter(chunks: list[tuple[float, bytes]], bound: list[int],
                          ready: asyncio.Event) -> None:
    """A TCP 'meter' that answers every request with ``chunks`` (delay, bytes); ``b"ECHO"``
    stands for the request itself, as some RS-485 adapters echo what the master sends."""

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while request := await reader.read(256):
                for delay, data in chunks:
                    await asyncio.sleep(delay)
                    writer.write(request if data == b"ECHO" else data)
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", 0)
    bound.append(server.sockets[0].getsockname()[1])
    ready.set()
    async with server:
        await server.serve_forever()


def _read_scripted(chunks: list[tuple[float, bytes]]) -> tuple[float | Exception, float]:
    async def main() -> tuple[float | Exception, float]:
        ready, bound = asyncio.Event(), []
        server = asyncio.create_task(_scripted_meter(chunks, bound, ready))
        await ready.wait()
        driver = Dlt645Driver(BusConfig(name="b", kind="dlt645", host="127.0.0.1",
                                        tcp_port=bound[0], timeout=TIMEOUT))
        points = (PointConfig(code="e", di="00010000", counter=True),)
        started = time.monotonic()
        try:
            result = await driver.read_meter(meter("000000000001", points))
            return result.values["e"], time.monotonic() - started
        except (MeterTimeout, MeterFrameError) as exc:
            return exc, time.monotonic() - started
        finally:
            await driver.close()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    return asyncio.run(main())


@pytest.mark.parametrize("chunks", [
    [(0, REPLY)],
    [(0, b"ECHO"), (0, REPLY)],                                      # adapter echo skipped
    [(0, REPLY[:5]), (0.05, REPLY[5:12]), (0.05, REPLY[12:])],      # split across segments
    [(0, b"\x00\x68\x68" + _corrupt(REPLY) + REPLY)],                # noise, bad frame, good one
])
def test_reply_is_found_in_a_messy_stream(chunks: list[tuple[float, bytes]]) -> None:
    value, _ = _read_scripted(chunks)
    assert value == 1234.56


def test_corrupt_reply_fails_at_once() -> None:
    error, elapsed = _read_scripted([(0, _corrupt(REPLY))])
    assert isinstance(error, MeterFrameError)
    assert elapsed < TIMEOUT / 2


def test_reply_finishing_after_the_timeout_is_a_timeout() -> None:
    error, elapsed = _read_scripted([(0, REPLY[:10]), (TIMEOUT + 0.1, REPLY[10:])])
    assert isinstance(error, MeterTimeout)
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 0.1
