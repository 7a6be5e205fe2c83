"""A DL/T 645-2007 meter simulator: answers as a set of :class:`SimMeter` on one bus.

Each meter answers read-data (11H) for the data identifiers its points name, with
``point_value(point, clock())`` divided by the point's ``scale`` and encoded in the
identifier's format (a value beyond the format's range is clamped, with a warning). Block
identifiers (``0201FF00`` …) are filled from the points whose ``field`` names an element;
other elements read 0. An identifier no point names gets an error reply (ERR 02H, no
requested data). Read-address (13H to AAAAAAAAAAAA) is answered by the first meter that is
not silent. Requests for other addresses get no answer.

Faults (``SimMeter.fault``): ``silent`` never answers; ``garble`` answers with a wrong
checksum; ``exception`` answers every request with an error reply (ERR 01H, other error).

Usage (the TCP port chosen for ``port=0`` is appended to ``bound`` before ``ready`` is set)::

    bound: list[int] = []
    ready = asyncio.Event()
    task = asyncio.create_task(serve_dlt645(meters, port=0, ready=ready, bound=bound))
    await ready.wait()
    port = bound[0]
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from .. import _dlt645 as codec
from ._link import serve_frames
from ._values import SimMeter, point_value

__all__ = ["Dlt645Responder", "serve_dlt645"]

logger = logging.getLogger(__name__)


def _garble(reply: bytes) -> bytes:
    corrupt = bytearray(reply)
    corrupt[-2] ^= 0xFF                   # checksum byte
    return bytes(corrupt)


def _fit(item: codec.DataItem, value: float) -> float:
    """Clamp ``value`` into what ``item``'s format can carry."""
    digits = len(item.fmt.replace(".", ""))
    top = (8 * 10 ** (digits - 1) if item.signed else 10**digits) - 1
    limit: float = top / 10**item.decimals
    low = -limit if item.signed else 0.0
    if not low <= value <= limit:
        logger.warning("DI %s: %g does not fit %s; sending %g", item.di, value, item.fmt,
                       min(max(value, low), limit))
        return min(max(value, low), limit)
    return value


class Dlt645Responder:
    """The pure part of the simulator: one request frame in, one reply (or silence) out."""

    def __init__(self, meters: Sequence[SimMeter], clock: Callable[[], float] = time.time
                 ) -> None:
        self.meters = {m.address.upper(): m for m in meters}
        self.clock = clock

    def answer(self, frame: codec.Frame) -> bytes | None:
        if frame.from_meter:
            return None                   # another meter's reply on a shared line
        if frame.control == codec.C_READ_ADDRESS:
            return self._read_address(frame)
        meter = self.meters.get(frame.address)
        if meter is None or meter.fault == "silent":
            return None
        reply = self._reply(meter, frame)
        return _garble(reply) if meter.fault == "garble" else reply

    def _read_address(self, frame: codec.Frame) -> bytes | None:
        if frame.address != codec.BROADCAST_ADDRESS:
            return None
        for meter in self.meters.values():
            if meter.fault == "silent":
                continue
            if meter.fault == "exception":
                return codec.encode_error_reply(meter.address, codec.ERR_OTHER,
                                                codec.C_READ_ADDRESS)
            reply = codec.encode_read_address_reply(meter.address)
            return _garble(reply) if meter.fault == "garble" else reply
        return None

    def _reply(self, meter: SimMeter, frame: codec.Frame) -> bytes:
        if meter.fault == "exception":
            return codec.encode_error_reply(meter.address, codec.ERR_OTHER, frame.control)
        if frame.control != codec.C_READ or len(frame.data) != 4:
            return codec.encode_error_reply(meter.address, codec.ERR_OTHER, frame.control)
        di = frame.data[::-1].hex().upper()
        points = [p for p in meter.points if (p.di or "").upper() == di]
        if not points or di not in codec.DATA_ITEMS:
            return codec.encode_error_reply(meter.address, codec.ERR_NO_DATA)
        item = codec.DATA_ITEMS[di]
        now = self.clock()
        values = [0.0] * item.count
        for point in points:
            try:
                index = codec.field_index(di, point.field)
            except ValueError:
                logger.warning("meter %s point %s: bad field %r", meter.address, point.code,
                               point.field)
                continue
            if index >= len(values):
                values += [0.0] * (index + 1 - len(values))
            values[index] = _fit(item, point_value(point, now) / point.scale)
        return codec.encode_read_reply(meter.address, di, codec.encode_values(di, values))


async def serve_dlt645(meters: Sequence[SimMeter], *, device: str | None = None,
                       host: str = "127.0.0.1", port: int | None = None,
                       ready: asyncio.Event | None = None,
                       clock: Callable[[], float] = time.time,
                       bound: list[int] | None = None) -> None:
    """Simulate ``meters`` on serial ``device`` or TCP ``host``:``port`` until cancelled.

    Give exactly one of ``device`` and ``port``. With ``port=0`` the port actually bound is
    appended to ``bound`` (if given) before ``ready`` is set.
    """
    responder = Dlt645Responder(meters, clock)
    await serve_frames(codec.split_frame, responder.answer, name="dlt645-sim", device=device,
                       host=host, port=port, ready=ready, bound=bound)
