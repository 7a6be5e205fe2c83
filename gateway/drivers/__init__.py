"""Meter protocol drivers, one per bus kind, behind the ``Driver`` seam."""

from __future__ import annotations

from .._model import BusConfig
from ._base import (
    Driver,
    MeterError,
    MeterExceptionReply,
    MeterFrameError,
    MeterTimeout,
    ReadResult,
)

__all__ = [
    "Driver",
    "MeterError",
    "MeterExceptionReply",
    "MeterFrameError",
    "MeterTimeout",
    "ReadResult",
    "open_driver",
]


def open_driver(bus: BusConfig) -> Driver:
    """The driver for ``bus``'s kind (not yet connected)."""
    if bus.kind in ("modbus-rtu", "modbus-tcp"):
        from ._modbus import ModbusDriver

        return ModbusDriver(bus)
    if bus.kind == "dlt645":
        from ._dlt645 import Dlt645Driver

        return Dlt645Driver(bus)
    if bus.kind == "cjt188":
        from ._cjt188 import Cjt188Driver

        return Cjt188Driver(bus)
    raise ValueError(f"no driver for bus kind {bus.kind!r}")
