"""A CJ/T 188-2004 meter simulator: answers 901F reads as a set of :class:`SimMeter`.

A meter answers a read (01H) addressed to its 14-digit address and to its type
(``SimMeter.device_type``, default 10H cold water; AAH matches any). Each 901F field is
``point_value(point, clock())`` / ``scale`` of the point with ``di = "901F"`` and that
``field``, sent in the unit code of the point's ``unit`` (m³ if the point has none or an
unknown one); fields without a point read 0. The real-time field is ``clock()`` in China
Standard Time; status is 0000 (valve open, battery good). The identifier is accepted and
echoed in either byte order (``90 1F`` as in the 2004 text, ``1F 90`` as 2018 meters send).
Another identifier gets an error reply.

Faults: ``silent`` never answers, ``garble`` answers with a wrong checksum, ``exception``
answers with an error reply (C1H, status 01H).

TCP port discovery is as in :func:`gateway.sim._dlt645_sim.serve_dlt645` (``bound``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime

from protocol._time import CST

from .. import _cjt188 as codec
from ._link import serve_frames
from ._values import SimMeter, point_value

__all__ = ["Cjt188Responder", "serve_cjt188"]

logger = logging.getLogger(__name__)

SIM_ERROR_STATUS = 0x01           # the status byte our simulated error replies carry


class Cjt188Responder:
    """The pure part of the simulator: one request frame in, one reply (or silence) out."""

    def __init__(self, meters: Sequence[SimMeter], clock: Callable[[], float] = time.time
                 ) -> None:
        self.meters = list(meters)
        self.clock = clock

    def answer(self, frame: codec.Frame) -> bytes | None:
        if frame.control & codec.REPLY_BIT:
            return None
        for meter in self.meters:
            device_type = codec.T_COLD_WATER if meter.device_type is None else meter.device_type
            if meter.address.upper() != frame.address:
                continue
            if frame.device_type not in (device_type, codec.WILDCARD_TYPE):
                continue
            if meter.fault == "silent":
                return None
            reply = self._reply(meter, device_type, frame)
            if meter.fault == "garble":
                corrupt = bytearray(reply)
                corrupt[-2] ^= 0xFF
                return bytes(corrupt)
            return reply
        return None

    def _reply(self, meter: SimMeter, device_type: int, frame: codec.Frame) -> bytes:
        di = frame.data[:2]
        if (meter.fault == "exception" or frame.control != codec.C_READ or len(frame.data) != 3
                or di not in (b"\x90\x1f", b"\x1f\x90")):
            return codec.encode_error_reply(device_type, meter.address, SIM_ERROR_STATUS)
        now = self.clock()
        values: dict[str, codec.Quantity] = {}
        for point in meter.points:
            if (point.di or "").upper() != codec.DI_READING or point.field is None:
                continue
            try:
                unit = codec.unit_code(point.unit) if point.unit else 0
            except KeyError:
                unit = 0
            raw = point_value(point, now) / point.scale
            values[point.field] = codec.Quantity(min(max(raw, 0.0), 999999.99), unit)
        stamp = datetime.fromtimestamp(now, CST).strftime("%Y%m%d%H%M%S")
        try:
            payload = codec.encode_901f(device_type, values, stamp)
        except OverflowError as exc:
            logger.warning("meter %s: %s", meter.address, exc)
            return codec.encode_error_reply(device_type, meter.address, SIM_ERROR_STATUS)
        return codec.encode_read_reply(device_type, meter.address, di, frame.data[2], payload)


async def serve_cjt188(meters: Sequence[SimMeter], *, device: str | None = None,
                       host: str = "127.0.0.1", port: int | None = None,
                       ready: asyncio.Event | None = None,
                       clock: Callable[[], float] = time.time,
                       bound: list[int] | None = None) -> None:
    """Simulate ``meters`` on serial ``device`` or TCP ``host``:``port`` until cancelled.

    Give exactly one of ``device`` and ``port``. With ``port=0`` the port actually bound is
    appended to ``bound`` (if given) before ``ready`` is set.
    """
    responder = Cjt188Responder(meters, clock)
    await serve_frames(codec.split_frame, responder.answer, name="cjt188-sim", device=device,
                       host=host, port=port, ready=ready, bound=bound)
