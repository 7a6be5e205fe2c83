"""Cjt188Driver against the CJ/T 188 simulator over real links: TCP on loopback and a socat
pty pair. Values are checked against ``point_value`` at the simulator's (fixed) clock."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway._model import BusConfig, MeterConfig, PointConfig
from gateway._profiles import load_profile
from gateway.drivers._base import MeterError, MeterExceptionReply, MeterFrameError, MeterTimeout
from gateway.drivers._cjt188 import Cjt188Driver
from gateway.sim._cjt188_sim import serve_cjt188
from gateway.sim._values import SimMeter, point_value

TIMEOUT = 0.3
T = 1_780_000_000.0

WATER = (
    PointConfig(code="w", di="901F", field="current_flow", counter=True, unit="m³",
                energy="water"),
    PointConfig(code="w_day", di="901F", field="settlement_flow", counter=True, unit="m³"),
)
HEAT = (
    PointConfig(code="q", di="901F", field="current_heat", counter=True, unit="GJ"),
    PointConfig(code="pw", di="901F", field="heat_power", unit="kW"),
    PointConfig(code="flow", di="901F", field="flow_rate", unit="m³/h"),
    PointConfig(code="ts", di="901F", field="supply_temp", unit="°C"),
    PointConfig(code="v", di="901F", field="accumulated_flow", counter=True, unit="m³"),
)

SIMS = [
    SimMeter("00000000000001", WATER),
    SimMeter("00000000000002", WATER, fault="silent"),
    SimMeter("00000000000003", WATER, fault="garble"),
    SimMeter("00000000000004", WATER, fault="exception"),
    SimMeter("00000000000005", HEAT, device_type=0x20),
]


def meter(address: str, points: tuple[PointConfig, ...] = WATER,
          device_type: int | None = None) -> MeterConfig:
    return MeterConfig(name=f"m{address[-1]}", bus="b", address=address, points=points,
                       device_type=device_type)


@asynccontextmanager
async def simulated_bus(transport: str, pty: tuple[str, str] | None
                        ) -> AsyncIterator[Cjt188Driver]:
    ready, bound = asyncio.Event(), []
    if transport == "tcp":
        server = asyncio.create_task(serve_cjt188(SIMS, port=0, ready=ready, bound=bound,
                                                  clock=lambda: T))
    else:
        assert pty is not None
        server = asyncio.create_task(serve_cjt188(SIMS, device=pty[1], ready=ready,
                                                  clock=lambda: T))
    driver: Cjt188Driver | None = None
    try:
        await asyncio.wait_for(ready.wait(), 5)
        if transport == "tcp":
            bus = BusConfig(name="b", kind="cjt188", host="127.0.0.1", tcp_port=bound[0],
                            timeout=TIMEOUT)
        else:
            assert pty is not None
            bus = BusConfig(name="b", kind="cjt188", port=pty[0], baudrate=2400, parity="E",
                            timeout=TIMEOUT)
        driver = Cjt188Driver(bus)
        yield driver
    finally:
        if driver is not None:
            await driver.close()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


def run(transport: str, request: pytest.FixtureRequest,
        body: Callable[[Cjt188Driver], Coroutine[Any, Any, None]]) -> None:
    pty = request.getfixturevalue("pty_pair") if transport == "serial" else None

    async def main() -> None:
        async with simulated_bus(transport, pty) as driver:
            await body(driver)

    asyncio.run(main())


TRANSPORTS = pytest.mark.parametrize("transport", ["tcp", "serial"])


@TRANSPORTS
def test_water_and_heat_round_trip(transport: str, request: pytest.FixtureRequest) -> None:
    async def body(driver: Cjt188Driver) -> None:
        water = await driver.read_meter(meter("00000000000001"))
        assert (water.errors, water.requests) == ({}, 1)      # one 901F serves both points
        for point in WATER:
            assert water.values[point.code] == pytest.approx(point_value(point, T), abs=0.005)
        heat = await driver.read_meter(meter("00000000000005", HEAT, 0x20))
        assert heat.errors == {}
        for point in HEAT:
            tolerance = 0.00005 if point.field == "flow_rate" else 0.005
            assert heat.values[point.code] == pytest.approx(point_value(point, T),
                                                            abs=tolerance)
    run(transport, request, body)


@TRANSPORTS
def test_faults_and_recovery(transport: str, request: pytest.FixtureRequest) -> None:
    async def body(driver: Cjt188Driver) -> None:
        started = time.monotonic()
        with pytest.raises(MeterTimeout):
            await driver.read_meter(meter("00000000000002"))
        assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 0.25
        assert len((await driver.read_meter(meter("00000000000001"))).values) == 2
        with pytest.raises(MeterFrameError, match="checksum"):
            await driver.read_meter(meter("00000000000003"))
        assert len((await driver.read_meter(meter("00000000000001"))).values) == 2
        with pytest.raises(MeterExceptionReply):
            await driver.read_meter(meter("00000000000004"))
        assert len((await driver.read_meter(meter("00000000000001"))).values) == 2
        with pytest.raises(MeterTimeout):          # a heat meter's address, asked as water
            await driver.read_meter(meter("00000000000005", WATER))
    run(transport, request, body)


@TRANSPORTS
def test_point_errors(transport: str, request: pytest.FixtureRequest) -> None:
    points = (*WATER, PointConfig(code="x", di="901F", field="supply_temp"),
              PointConfig(code="y", di="907F", field="current_flow"),
              PointConfig(code="z", di="901F", field="current_flow", unit="kWh"))

    async def body(driver: Cjt188Driver) -> None:
        result = await driver.read_meter(meter("00000000000001", points))
        assert set(result.values) == {"w", "w_day"}
        assert "field 'supply_temp' not one of" in str(result.errors["x"])
        assert "only 901F" in str(result.errors["y"])
        assert "point wants kWh" in str(result.errors["z"])
        with pytest.raises(MeterError, match="only 901F"):
            await driver.read_meter(meter("00000000000001", points[3:4]))
    run(transport, request, body)


@pytest.mark.parametrize(("name", "device_type"), [("cjt188_water", 0x10), ("cjt188_heat", 0x20)])
def test_shipped_profiles_read_through_driver(name: str, device_type: int) -> None:
    profile = load_profile(name, Path("."))
    assert profile.device_type == device_type
    points = tuple(PointConfig(**{**fields, "code": f"m.{fields['key']}"})
                   for _, fields in profile.points)

    async def main() -> None:
        ready, bound = asyncio.Event(), []
        sims = [SimMeter("00000000000042", points, device_type=device_type)]
        server = asyncio.create_task(serve_cjt188(sims, port=0, ready=ready, bound=bound,
                                                  clock=lambda: T))
        await ready.wait()
        driver = Cjt188Driver(BusConfig(name="b", kind="cjt188", host="127.0.0.1",
                                        tcp_port=bound[0], timeout=TIMEOUT))
        try:
            result = await driver.read_meter(meter("00000000000042", points, device_type))
            assert (result.errors, result.requests) == ({}, 1)
            for point in points:
                assert result.values[point.code] == pytest.approx(point_value(point, T),
                                                                  abs=0.005), point.key
        finally:
            await driver.close()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

    asyncio.run(main())
