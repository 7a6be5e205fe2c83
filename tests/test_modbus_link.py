"""ModbusDriver against the Modbus simulator over real links: TCP on loopback, RTU over a
socat pty pair (the ``pty_pair`` fixture of conftest.py). Also the simulator's framing
helpers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pymodbus.framer import FramerRTU

from gateway._model import BusConfig, MeterConfig, PointConfig
from gateway._registers import encode, plan_reads
from gateway.drivers._base import (
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)
from gateway.drivers._modbus import ModbusDriver
from gateway.sim._modbus_sim import (
    SimBank,
    answer_pdu,
    crc16,
    serve_modbus_rtu,
    serve_modbus_tcp,
    split_rtu_requests,
)
from gateway.sim._values import SimMeter, point_constants, point_value

TIMEOUT = 0.25

POINTS = (
    PointConfig(code="u1", register=0, function="input", type="float32", unit="V"),
    PointConfig(code="u2", register=2, function="input", type="float32", unit="V"),
    PointConfig(code="p", register=12, function="input", type="float32", unit="kW"),
    PointConfig(code="e", register=72, function="input", type="float32", unit="kWh",
                counter=True, energy="electricity"),
    PointConfig(code="e_wh", register=0x100, function="holding", type="int64", scale=0.001,
                unit="kWh", counter=True, energy="electricity"),
    PointConfig(code="i", register=0x104, function="holding", type="uint32", scale=0.01,
                word_order="little", unit="A"),
    PointConfig(code="f", register=0x106, function="holding", type="int16", scale=0.1,
                byte_order="little", unit="Hz"),
    PointConfig(code="q", register=0x10F, function="holding", type="float64", unit="kvar"),
)


def meter(address: str, points: tuple[PointConfig, ...] = POINTS) -> MeterConfig:
    return MeterConfig(name=f"m{address}", bus="b", address=address, points=points)


def sims(points: tuple[PointConfig, ...] = POINTS) -> list[SimMeter]:
    return [
        SimMeter("1", points),
        SimMeter("2", points, fault="silent"),
        SimMeter("3", points, fault="garble"),
        SimMeter("4", points, fault="exception"),
        SimMeter("5", points),
    ]


def tolerance(p: PointConfig, v: float) -> float:
    if p.type == "float32":
        return abs(v) * 2.0**-23
    if p.type == "float64":
        return abs(v) * 2.0**-50
    return abs(p.scale) / 2 + 1e-9   # integers: rounded to one raw step


def check_values(result: ReadResult, points: tuple[PointConfig, ...], t0: float, t1: float) -> None:
    """Every value lies between what the point showed at t0 and at t1 (sampled in between)."""
    assert set(result.values) == {p.code for p in points}
    for p in points:
        a, b = point_value(p, t0), point_value(p, t1)
        lo, hi = min(a, b), max(a, b)
        tol = tolerance(p, hi) + 1e-9
        v = result.values[p.code]
        assert lo - tol <= v <= hi + tol, (p.code, v, lo, hi)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def tcp_sim(meters: list[SimMeter], port: int = 0, *, strict: bool = False,
                  ) -> AsyncIterator[int]:
    ready, bound = asyncio.Event(), list[int]()
    task = asyncio.create_task(
        serve_modbus_tcp(meters, port=port, ready=ready, bound=bound, strict=strict))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        yield bound[0]
    finally:
        await stop(task)


@contextlib.asynccontextmanager
async def rtu_sim(meters: list[SimMeter], device: str, *, strict: bool = False,
                  ) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(serve_modbus_rtu(meters, device=device, ready=ready,
                                                strict=strict))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        yield
    finally:
        await stop(task)


@contextlib.asynccontextmanager
async def driver(bus: BusConfig, **kw: object) -> AsyncIterator[ModbusDriver]:
    d = ModbusDriver(bus, **kw)  # type: ignore[arg-type]
    await d.connect()
    try:
        yield d
    finally:
        await d.close()


def tcp_bus(port: int) -> BusConfig:
    return BusConfig(name="b", kind="modbus-tcp", host="127.0.0.1", tcp_port=port,
                     timeout=TIMEOUT)


def rtu_bus(device: str) -> BusConfig:
    # even parity, RTU's default (MODBUS over Serial Line V1.02 §2.5.1); the driver opens a
    # pty without parity, which a pty does not have (tests/test_serial_open.py)
    return BusConfig(name="b", kind="modbus-rtu", port=device, baudrate=9600, parity="E",
                     timeout=TIMEOUT)


async def read_good(d: ModbusDriver, m: MeterConfig) -> ReadResult:
    t0 = time.time()
    result = await d.read_meter(m)
    t1 = time.time()
    check_values(result, m.points, t0, t1)
    assert result.errors == {}
    assert result.requests == len(d.plan(m))
    return result


async def faults_then_good(d: ModbusDriver) -> None:
    """Each bad meter fails its own way; the good meter reads right after each."""
    good = meter("1")
    await read_good(d, good)
    for _ in range(5):   # more silent requests than pymodbus' own disconnect rule (retries+3)
        started = time.monotonic()
        with pytest.raises(MeterTimeout) as timeout:
            await d.read_meter(meter("2"))
        elapsed = time.monotonic() - started
        assert TIMEOUT * 0.9 <= elapsed <= TIMEOUT + 0.3, elapsed
        assert timeout.value.meter == "m2"
    await read_good(d, good)

    with pytest.raises(MeterFrameError) as garbled:
        await d.read_meter(meter("3"))
    assert garbled.value.meter == "m3"
    await read_good(d, good)

    with pytest.raises(MeterExceptionReply) as refused:
        await d.read_meter(meter("4"))
    assert refused.value.code == 2
    await read_good(d, good)
    await read_good(d, meter("5"))


def test_test_points_fit_their_register_types() -> None:
    """The simulated values of POINTS fit their types at any time of the hour (and for a
    year of counting), so the link tests cannot fail by the clock."""
    for p in POINTS:
        a, b = point_constants(p)
        extremes = (a, a + b * 24 * 366) if p.counter else (a - b, a + b)
        for v in extremes:
            encode(p, v)


# ---- framing helpers (pure) ---------------------------------------------------------------


def test_crc16_vectors() -> None:
    # "01 03 00 00 00 01 84 0A": read 1 holding register of unit 1 (CRC sent low byte first)
    assert crc16(bytes.fromhex("010300000001")).to_bytes(2, "little") == bytes.fromhex("840a")
    for frame in (b"\x11\x03\x00\x6b\x00\x03", bytes(range(40)), b"\xff" * 7):
        assert crc16(frame) == int.from_bytes(
            FramerRTU.compute_CRC(frame).to_bytes(2, "big"), "little")


def _frame(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def test_split_rtu_requests_resynchronises() -> None:
    r1 = _frame(bytes.fromhex("0103006b0003"))
    r2 = _frame(bytes.fromhex("020400000002"))
    bad = bytearray(r1)
    bad[-1] ^= 0xFF
    frames, rest = split_rtu_requests(b"\x00\xff" + r1 + bytes(bad) + r2 + r1[:5])
    assert frames == [r1, r2]
    assert rest == r1[:5]
    frames, rest = split_rtu_requests(rest + r1[5:])
    assert frames == [r1]
    assert rest == b""
    # a function whose length the parser does not know is found by its CRC
    odd = _frame(bytes.fromhex("0111"))
    assert split_rtu_requests(odd) == ([odd], b"")


def test_answer_pdu_checks_requests() -> None:
    bank = SimBank([SimMeter("7", POINTS)], clock=lambda: 1_800_000_000.0)
    assert answer_pdu(bank, 7, bytes.fromhex("06000a0001")) == bytes.fromhex("8601")
    assert answer_pdu(bank, 7, bytes.fromhex("030000007e")) == bytes.fromhex("8303")
    assert answer_pdu(bank, 7, bytes.fromhex("03fffe0003")) == bytes.fromhex("8302")
    assert answer_pdu(bank, 8, bytes.fromhex("0300000001")) is None
    reply = answer_pdu(bank, 7, bytes.fromhex("0300000004"))  # unmapped: zeros
    assert reply == bytes.fromhex("0308") + bytes(8)
    strict = SimBank([SimMeter("7", POINTS)], strict=True)
    assert answer_pdu(strict, 7, bytes.fromhex("0300000004")) == bytes.fromhex("8302")
    with pytest.raises(ValueError, match="two simulated meters"):
        SimBank([SimMeter("7", POINTS), SimMeter("07", POINTS)])


# ---- TCP ----------------------------------------------------------------------------------


def test_tcp_round_trip_and_request_count() -> None:
    async def main() -> None:
        async with tcp_sim(sims()) as port, driver(tcp_bus(port)) as d:
            m = meter("1")
            plan = d.plan(m)
            assert plan == plan_reads(POINTS)
            assert [(b.function_code, b.start, b.count) for b in plan] == [
                (3, 0x100, 19), (4, 0, 14), (4, 72, 2)]
            result = await read_good(d, m)
            assert result.requests == 3
            assert d.plan(m) is plan   # cached

        async with tcp_sim(sims()) as port, driver(tcp_bus(port), merge=False) as d:
            result = await read_good(d, meter("1"))
            assert result.requests == len(POINTS)

    asyncio.run(main())


def test_tcp_faults_leave_the_link_usable() -> None:
    async def main() -> None:
        async with tcp_sim(sims()) as port, driver(tcp_bus(port)) as d:
            await faults_then_good(d)

    asyncio.run(main())


def test_tcp_exception_in_one_block_only() -> None:
    async def main() -> None:
        extra = PointConfig(code="x", register=500, function="holding", type="uint16")
        async with tcp_sim([SimMeter("1", POINTS)], strict=True) as port, \
                driver(tcp_bus(port)) as d:
            t0 = time.time()
            result = await d.read_meter(meter("1", (*POINTS, extra)))
            t1 = time.time()
            assert result.requests == 4
            assert set(result.errors) == {"x"}
            assert isinstance(result.errors["x"], MeterExceptionReply)
            assert result.errors["x"].code == 2
            check_values(ReadResult(values=result.values), POINTS, t0, t1)
            with pytest.raises(MeterExceptionReply):   # nothing readable: raised
                await d.read_meter(meter("1", (extra,)))

    asyncio.run(main())


def test_tcp_unknown_unit_gets_gateway_exception() -> None:
    async def main() -> None:
        async with tcp_sim(sims()) as port, driver(tcp_bus(port)) as d:
            with pytest.raises(MeterExceptionReply) as exc:
                await d.read_meter(meter("99"))
            assert exc.value.code == 0x0B

    asyncio.run(main())


def test_tcp_lost_connection_then_reconnect() -> None:
    async def main() -> None:
        async with tcp_sim(sims()) as port:
            d = ModbusDriver(tcp_bus(port))
            await d.connect()
            await read_good(d, meter("1"))
        # the server is gone: the link error surfaces as an OSError for the poller
        await asyncio.sleep(0.05)
        with pytest.raises(OSError, match=r"not connected|Connection"):
            await d.read_meter(meter("1"))
        await d.close()
        with pytest.raises(OSError, match="cannot open"):
            await d.connect()
        async with tcp_sim(sims(), port=port):
            await d.connect()
            await read_good(d, meter("1"))
        await d.close()
        await d.close()   # twice is fine

    asyncio.run(main())


def test_driver_rejects_wrong_bus() -> None:
    with pytest.raises(ValueError, match="cannot drive"):
        ModbusDriver(BusConfig(name="b", kind="dlt645", port="/dev/null"))
    with pytest.raises(ValueError, match="needs host"):
        ModbusDriver(BusConfig(name="b", kind="modbus-tcp"))
    with pytest.raises(ValueError, match="serial port"):
        ModbusDriver(BusConfig(name="b", kind="modbus-rtu"))


# ---- RTU over a pty pair ------------------------------------------------------------------


def test_rtu_round_trip_and_request_count(pty_pair: tuple[str, str]) -> None:
    client_dev, sim_dev = pty_pair

    async def main() -> None:
        async with rtu_sim(sims(), sim_dev), driver(rtu_bus(client_dev)) as d:
            result = await read_good(d, meter("5"))
            assert result.requests == 3
        async with rtu_sim(sims(), sim_dev), driver(rtu_bus(client_dev), merge=False) as d:
            result = await read_good(d, meter("1"))
            assert result.requests == len(POINTS)

    asyncio.run(main())


def test_rtu_faults_leave_the_bus_usable(pty_pair: tuple[str, str]) -> None:
    client_dev, sim_dev = pty_pair

    async def main() -> None:
        async with rtu_sim(sims(), sim_dev), driver(rtu_bus(client_dev)) as d:
            await faults_then_good(d)

    asyncio.run(main())


def test_rtu_missing_port_is_an_oserror(tmp_path: Path) -> None:
    async def main() -> None:
        d = ModbusDriver(rtu_bus(str(tmp_path / "no-such-tty")))
        with pytest.raises(OSError, match="cannot open"):
            await d.connect()
        await d.close()

    asyncio.run(main())

