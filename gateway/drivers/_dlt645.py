"""DL/T 645-2007 bus driver: one read request per data identifier.

Points with the same DI (block identifiers with a ``field`` each) share one request. The
first transaction decides whether the meter is there: a timeout or corrupt reply to it fails
the whole meter (MeterTimeout / MeterFrameError); later failures, and error replies for single
identifiers, become per-point errors. If no point could be read the first error is raised.
Retrying is the poller's job.
"""

from __future__ import annotations

import asyncio
import logging

from .. import _dlt645 as codec
from .._model import BusConfig, MeterConfig, PointConfig
from ._base import (
    MeterError,
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)
from ._serial_link import FrameLink, open_link

__all__ = ["Dlt645Driver"]

logger = logging.getLogger(__name__)


class Dlt645Driver:
    """Driver for a ``dlt645`` bus: serial (``bus.port``) or TCP (``bus.host``/``tcp_port``)."""

    def __init__(self, bus: BusConfig) -> None:
        self.bus = bus
        self._link: FrameLink = open_link(bus)

    async def connect(self) -> None:
        if not self._link.is_open:
            await self._link.open()

    async def close(self) -> None:
        await self._link.close()

    async def read_address(self) -> str:
        """Ask the only meter on the line for its address (13H to AAAAAAAAAAAA)."""
        await self.connect()
        try:
            async with asyncio.timeout(self.bus.timeout):
                frame = await self._link.transact(
                    codec.encode_read_address_request(), codec.split_frame,
                    lambda f: f.from_meter)
            return codec.decode_read_address_reply(frame)
        except TimeoutError:
            raise MeterTimeout("?", "no answer to read-address") from None
        except codec.Dlt645Error as exc:
            raise MeterFrameError("?", str(exc)) from None

    async def read_meter(self, meter: MeterConfig) -> ReadResult:
        result = ReadResult()
        groups: dict[str, list[PointConfig]] = {}
        for point in meter.points:
            if point.di is None:
                result.errors[point.code] = MeterError(meter.name, f"point {point.code}: no di")
                continue
            groups.setdefault(point.di.upper(), []).append(point)
        first: MeterError | None = None
        answered = False                  # has the meter sent any well-formed reply yet?
        for di, points in groups.items():
            try:
                values = await self._read_di(meter, di, result)
            except MeterError as exc:
                if isinstance(exc, MeterTimeout | MeterFrameError) and not answered:
                    raise                 # the meter is not answering properly at all
                answered = answered or isinstance(exc, MeterExceptionReply)
                first = first or exc
                for point in points:
                    result.errors[point.code] = exc
                continue
            answered = True
            for point in points:
                try:
                    value = values[codec.field_index(di, point.field)]
                except (ValueError, IndexError) as exc:
                    result.errors[point.code] = MeterError(meter.name, f"{point.code}: {exc}")
                    continue
                result.values[point.code] = value * point.scale
        if not result.values and first is not None:
            raise first
        return result

    async def _read_di(self, meter: MeterConfig, di: str, result: ReadResult
                       ) -> tuple[float, ...]:
        try:
            codec.data_item(di)
            request = codec.encode_read_request(meter.address, di)
        except (KeyError, ValueError) as exc:
            raise MeterError(meter.name, str(exc).strip("'\"")) from None
        try:
            await self.connect()
        except OSError as exc:
            raise MeterTimeout(meter.name, f"link: {exc}") from exc
        result.requests += 1
        try:
            async with asyncio.timeout(self.bus.timeout):   # the whole reply, not per byte
                frame = await self._link.transact(request, codec.split_frame,
                                                  lambda f: f.from_meter)
        except TimeoutError:
            raise MeterTimeout(meter.name, f"no complete reply to {di} within "
                                           f"{self.bus.timeout:g} s") from None
        except codec.FrameError as exc:
            raise MeterFrameError(meter.name, f"{di}: {exc}") from None
        except OSError as exc:
            await self._link.close()      # reopened on the next read
            raise MeterTimeout(meter.name, f"link: {exc}") from exc
        try:
            return codec.decode_values(di, codec.decode_read_reply(frame, meter.address, di))
        except codec.ErrorReply as exc:
            raise MeterExceptionReply(meter.name, f"{di}: {exc}", exc.code) from None
        except codec.Dlt645Error as exc:
            raise MeterFrameError(meter.name, f"{di}: {exc}") from None
