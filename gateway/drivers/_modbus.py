"""Modbus RTU and Modbus TCP meters, through pymodbus' asyncio clients.

One ``ModbusDriver`` per bus. ``read_meter`` reads a meter's points with as few requests as
``gateway._registers.plan_reads`` allows (plans are cached per meter), decodes them, and maps
failures onto the MeterError family:

- no answer within ``bus.timeout``                → MeterTimeout
- bytes arrived but no valid answer (CRC, MBAP)   → MeterFrameError
- a Modbus exception response                     → MeterExceptionReply(code)
- the link itself is gone (TCP closed, port lost) → ConnectionError (an OSError: the poller
  resets the link and reconnects)

pymodbus drops a garbled frame silently and then reports a timeout; to tell "garbled" from
"silent" the driver watches the raw bytes through pymodbus' ``trace_packet`` hook. pymodbus'
own retries are 0 (the poller retries) and its disconnect-after-N-silent-requests rule is
switched off: a silent meter behind a TCP gateway must not cut the link for the others — the
poller decides when to reset a link. pymodbus empties its receive buffer before each request,
so the remains of a garbled or late answer never reach the next meter (tests/test_modbus_link.py
checks a good meter right after each bad one).

pymodbus would open an RTU port inside the event loop; the driver opens it off the loop with a
deadline (``_port_open``) and hands pymodbus the finished transport. And since pymodbus waits
with ``asyncio.wait_for``, which on Python 3.11 drops a cancellation that arrives together with
the answer (CPython gh-86296, fixed in 3.12), the driver re-raises such a cancellation after
each pymodbus call: a bus task told to stop must stop, or a task group waits for it forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.transport.serialtransport import SerialTransport

from gateway._model import BusConfig, MeterConfig
from gateway._registers import MAX_READ_REGISTERS, ReadBlock, block_registers, decode, plan_reads

from ._base import (
    MeterError,
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)
from ._port_open import effective_parity, open_off_loop

__all__ = ["ModbusDriver"]

log = logging.getLogger(__name__)

#: pymodbus closes a TCP link after this many silent requests in a row; "never" here.
_NEVER = 1 << 30


def _raise_dropped_cancel() -> None:
    """Raise CancelledError if this task was cancelled and an ``asyncio.wait_for`` inside
    pymodbus returned a result instead (Python 3.11, CPython gh-86296)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class ModbusDriver:
    """The Driver for ``modbus-rtu`` (serial) and ``modbus-tcp`` buses.

    ``merge=False`` reads each point with its own request (a baseline for benchmarks);
    ``max_gap`` and ``max_registers`` bound merging (see ``plan_reads``).
    """

    def __init__(
        self,
        bus: BusConfig,
        *,
        merge: bool = True,
        max_gap: int = 8,
        max_registers: int = MAX_READ_REGISTERS,
    ) -> None:
        if bus.kind not in ("modbus-rtu", "modbus-tcp"):
            raise ValueError(f"bus {bus.name!r}: ModbusDriver cannot drive kind {bus.kind!r}")
        if bus.kind == "modbus-tcp" and (bus.host is None or bus.tcp_port is None):
            raise ValueError(f"bus {bus.name!r}: modbus-tcp needs host and port")
        if bus.kind == "modbus-rtu" and not bus.port:
            raise ValueError(f"bus {bus.name!r}: modbus-rtu needs a serial port")
        self.bus = bus
        self.merge = merge
        self.max_gap = max_gap
        self.max_registers = max_registers
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._plans: dict[str, tuple[MeterConfig, list[ReadBlock]]] = {}
        self._received = False

    # ---- connection ---------------------------------------------------------------------

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending and data:
            self._received = True
        return data

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        bus = self.bus
        if bus.kind == "modbus-tcp":
            return AsyncModbusTcpClient(
                bus.host or "",
                port=bus.tcp_port or 502,
                name=bus.name,
                timeout=bus.timeout,
                retries=0,
                reconnect_delay=0,          # no background reconnects: the poller decides
                trace_packet=self._trace,
            )
        return AsyncModbusSerialClient(
            bus.port or "",
            baudrate=bus.baudrate,
            parity=effective_parity(bus.port or "", bus.parity),
            stopbits=bus.stopbits,
            bytesize=bus.bytesize,
            name=bus.name,
            timeout=bus.timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace,
        )

    async def connect(self) -> None:
        """Open the serial port / TCP connection; ConnectionError (an OSError) if it fails."""
        if self._client is not None and self._client.connected:
            return
        await self.close()
        client = self._new_client()
        client.set_max_no_responses(_NEVER)
        where = self.bus.port if self.bus.kind == "modbus-rtu" else (
            f"{self.bus.host}:{self.bus.tcp_port}")
        opened = None
        if isinstance(client, AsyncModbusSerialClient):
            opened = await self._open_serial(client)
        try:
            connected = await client.connect()
            _raise_dropped_cancel()
            if not connected:
                raise ConnectionError(f"bus {self.bus.name!r}: cannot open {where}")
        except BaseException:
            client.close()
            if opened is not None:
                opened.transport.close()      # idempotent; also when never handed over
            raise
        self._client = client
        log.debug("bus %s connected", self.bus.name)

    async def _open_serial(self, client: AsyncModbusSerialClient) -> _OpenedPort:
        """Open the client's port off the loop; its ``connect()`` then takes the transport."""
        bus = self.bus
        port = bus.port or ""
        params = client.ctx.comm_params
        loop = asyncio.get_running_loop()
        protocol = client.ctx           # a pymodbus client is its own asyncio protocol

        def open_transport() -> Any:
            # What pymodbus' create_serial_connection does, minus the loop-side set-up.
            return SerialTransport(loop, protocol, port, params.baudrate, params.bytesize,
                                   params.parity, params.stopbits, params.timeout_connect)

        try:
            transport = await open_off_loop(open_transport, lambda t: t.sync_serial.close(),
                                            deadline=max(2.0, 2 * bus.timeout),
                                            what=f"bus {bus.name!r}: {port}")
        except OSError as exc:          # serial.SerialException is one too
            raise ConnectionError(f"bus {bus.name!r}: cannot open {port}: {exc}") from exc
        opened = _OpenedPort(transport, protocol)
        client.ctx.call_create = opened.hand_over
        return opened

    async def close(self) -> None:
        """Close the link; safe to call twice."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # ---- reading ------------------------------------------------------------------------

    def plan(self, meter: MeterConfig) -> list[ReadBlock]:
        """The requests ``read_meter`` makes for ``meter`` (cached while the config is the same)."""
        cached = self._plans.get(meter.name)
        if cached is not None and cached[0] is meter:
            return cached[1]
        blocks = plan_reads(
            [p for p in meter.points if p.register is not None],
            max_registers=self.max_registers,
            max_gap=self.max_gap,
            merge=self.merge,
        )
        self._plans[meter.name] = (meter, blocks)
        return blocks

    async def _transact(self, meter: MeterConfig, block: ReadBlock) -> Sequence[int]:
        client = self._client
        if client is None or not client.connected:
            raise ConnectionError(f"bus {self.bus.name!r} is not connected")
        call = (client.read_holding_registers if block.function == "holding"
                else client.read_input_registers)
        self._received = False
        what = f"FC{block.function_code} {block.count} registers at {block.start}"
        try:
            try:
                rsp = await call(block.start, count=block.count, device_id=meter.unit_id)
            finally:
                _raise_dropped_cancel()
        except ModbusIOException as exc:
            if self._received:
                raise MeterFrameError(
                    meter.name, f"{what}: bytes arrived but no valid answer") from exc
            raise MeterTimeout(
                meter.name, f"{what}: no answer within {self.bus.timeout} s") from exc
        except ConnectionException as exc:
            raise ConnectionError(f"bus {self.bus.name!r}: {exc}") from exc
        if rsp.isError():
            code = int(getattr(rsp, "exception_code", 0))
            raise MeterExceptionReply(meter.name, f"{what}: exception code {code}", code)
        regs: Sequence[int] = rsp.registers
        if len(regs) != block.count:
            raise MeterFrameError(meter.name, f"{what}: answer has {len(regs)} registers")
        return regs

    async def read_meter(self, meter: MeterConfig) -> ReadResult:
        """Read every Modbus point of ``meter``.

        A block answered with a Modbus exception puts its points in ``errors`` (and so does a
        float register holding NaN/inf); the read goes on. A timeout or garbled answer ends
        the read at once (the meter or the line is in trouble; the poller retries). Raises
        the first MeterError when no point at all could be read.
        """
        result = ReadResult()
        for block in self.plan(meter):
            result.requests += 1
            try:
                regs = await self._transact(meter, block)
            except MeterExceptionReply as exc:
                for p in block.points:
                    result.errors[p.code] = exc
                continue
            for p, words in block_registers(block, regs):
                try:
                    result.values[p.code] = decode(p, words)
                except ValueError as exc:
                    result.errors[p.code] = MeterError(meter.name, str(exc))
        if not result.values and result.errors:
            raise next(iter(result.errors.values()))
        return result


class _OpenedPort:
    """A pymodbus serial transport opened off the loop, handed to pymodbus' ``connect()`` in
    place of its own ``create_serial_connection`` (once: a reconnect goes through the driver)."""

    def __init__(self, transport: Any, protocol: Any) -> None:
        self.transport = transport
        self.protocol = protocol
        self.handed = False

    async def hand_over(self) -> tuple[Any, Any]:
        if self.handed:
            raise OSError("the port is reopened by the driver, not by pymodbus")
        self.handed = True
        self.transport.setup()          # watch the port; connection_made follows soon
        return self.transport, self.protocol
