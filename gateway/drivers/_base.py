"""The seam between the bus poller and a meter protocol.

A driver owns one bus's transport (a serial port or a TCP connection). The poller calls
``read_meter`` for one meter at a time (one transaction at a time per bus) and never
concurrently on the same driver.

Exceptions (all carry the meter name)::

    MeterError
    ├── MeterTimeout        no (complete) answer within the bus timeout
    ├── MeterFrameError     garbled answer: bad CRC / checksum / framing / wrong address
    └── MeterExceptionReply the meter answered with an error code (Modbus exception, DL/T 645)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .._model import BusConfig, MeterConfig

__all__ = [
    "Driver",
    "MeterError",
    "MeterExceptionReply",
    "MeterFrameError",
    "MeterTimeout",
    "ReadResult",
]


class MeterError(Exception):
    """A meter could not be read."""

    def __init__(self, meter: str, detail: str) -> None:
        super().__init__(f"meter {meter!r}: {detail}")
        self.meter = meter
        self.detail = detail


class MeterTimeout(MeterError):
    """No complete answer within the timeout."""


class MeterFrameError(MeterError):
    """An answer arrived but was corrupt (CRC, checksum, framing, address)."""


class MeterExceptionReply(MeterError):
    """The meter answered with an error code."""

    def __init__(self, meter: str, detail: str, code: int) -> None:
        super().__init__(meter, detail)
        self.code = code


@dataclass(slots=True)
class ReadResult:
    """Scaled values by point code; ``errors`` names points that could not be read while
    others could (e.g. one DL/T 645 data identifier the meter does not support).
    ``requests`` counts the transactions the read took."""

    values: dict[str, float] = field(default_factory=dict)
    errors: dict[str, MeterError] = field(default_factory=dict)
    requests: int = 0


class Driver(Protocol):
    """One bus's protocol driver. Created by ``gateway.drivers.open_driver(bus)``."""

    bus: BusConfig

    async def connect(self) -> None:
        """Open the port / connection. May raise OSError; the poller retries later."""

    async def read_meter(self, meter: MeterConfig) -> ReadResult:
        """Read every point of ``meter``. Raises MeterError when nothing could be read."""

    async def close(self) -> None:
        """Release the port / connection; safe to call twice."""
