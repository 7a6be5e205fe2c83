"""CJ/T 188 bus driver: one 901F request per meter serves all its points.

Each point names a ``field`` of the 901F reply (``current_flow``, ``settlement_flow``,
``status`` for water and gas meters; heat meters: see :mod:`gateway._cjt188`). Values are
converted from the unit code the meter sends to the point's ``unit`` when it has one (``m³``,
``L``, ``kWh``, ``GJ``, ``kW``, ``m³/h`` …), then multiplied by ``scale``. The meter type byte
is ``meter.device_type`` (default 10H, cold water meter). Retrying is the poller's job.
"""

from __future__ import annotations

import asyncio
import logging

from .. import _cjt188 as codec
from .._model import BusConfig, MeterConfig, PointConfig
from ._base import (
    MeterError,
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)
from ._serial_link import FrameLink, open_link

__all__ = ["Cjt188Driver"]

logger = logging.getLogger(__name__)


class Cjt188Driver:
    """Driver for a ``cjt188`` bus: serial (``bus.port``) or TCP (``bus.host``/``tcp_port``)."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._link: FrameLink = open_link(bus)
        self._ser = 0

    async def connect(self) -> None:
        if not self._link.is_open:
            await self._link.open()

    async def close(self) -> None:
        await self._link.close()

    async def read_meter(self, meter: MeterConfig) -> ReadResult:
        result = ReadResult()
        device_type = codec.T_COLD_WATER if meter.device_type is None else meter.device_type
        wanted: list[PointConfig] = []
        for point in meter.points:
            di = (point.di or "").upper()
            if di != codec.DI_READING:
                result.errors[point.code] = MeterError(
                    meter.name, f"{point.code}: di {point.di!r} unsupported (only 901F)")
            elif point.field not in codec.fields_for(device_type):
                result.errors[point.code] = MeterError(
                    meter.name, f"{point.code}: field {point.field!r} not one of "
                                f"{', '.join(codec.fields_for(device_type))}")
            else:
                wanted.append(point)
        if not wanted:
            if result.errors:
                raise next(iter(result.errors.values()))
            return result
        reading = await self._read_901f(meter, device_type, result)
        for point in wanted:
            assert point.field is not None
            try:
                value = reading.values[point.field].to(point.unit)
            except codec.Cjt188Error as exc:
                result.errors[point.code] = MeterError(meter.name, f"{point.code}: {exc}")
                continue
            result.values[point.code] = value * point.scale
        if not result.values:
            raise next(iter(result.errors.values()))
        return result

    async def _read_901f(self, meter: MeterConfig, device_type: int, result: ReadResult
                         ) -> codec.Reading901F:
        try:
            request = codec.encode_read_request(device_type, meter.address, ser=self._ser)
        except ValueError as exc:
            raise MeterError(meter.name, str(exc)) from None
        self._ser = (self._ser + 1) & 0xFF
        try:
            await self.connect()
        except OSError as exc:
            raise MeterTimeout(meter.name, f"link: {exc}") from exc
        result.requests += 1
        try:
            async with asyncio.timeout(self.bus.timeout):   # the whole reply, not per byte
                frame = await self._link.transact(
                    request, codec.split_frame, lambda f: bool(f.control & codec.REPLY_BIT))
        except TimeoutError:
            raise MeterTimeout(meter.name, f"no complete reply within "
                                           f"{self.bus.timeout:g} s") from None
        except codec.FrameError as exc:
            raise MeterFrameError(meter.name, str(exc)) from None
        except OSError as exc:
            await self._link.close()      # reopened on the next read
            raise MeterTimeout(meter.name, f"link: {exc}") from exc
        try:
            _, payload = codec.decode_read_reply(frame, device_type, meter.address)
            return codec.decode_901f(device_type, payload)
        except codec.ErrorReply as exc:
            raise MeterExceptionReply(meter.name, str(exc), exc.code) from None
        except codec.Cjt188Error as exc:
            raise MeterFrameError(meter.name, str(exc)) from None
