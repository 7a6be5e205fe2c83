"""What simulated meters report: values that are a known function of time.

Tests and demos compute the expected value of any point at any instant with ``point_value``.
Counters (``counter = true``) rise linearly from an offset; other points follow a slow sine
around a physically plausible mean for their unit (voltages near 220 V, 50 Hz, power factors
near 0.9, temperatures of a water circuit), so ``kemon gateway selftest`` finds them plausible.
Each point's constants derive from its code, so two points differ but never change between runs.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from .._model import PointConfig

__all__ = ["FAULTS", "SimMeter", "point_constants", "point_value"]

FAULTS = ("none", "silent", "garble", "exception")

#: The simulated counters start counting at this instant (2026-01-01T00:00:00+08:00).
T0 = 1_767_196_800.0


@dataclass(frozen=True, slots=True)
class SimMeter:
    """A simulated meter: its address, its points and how it misbehaves.

    ``fault``: ``none`` answers correctly; ``silent`` never answers; ``garble`` answers with a
    corrupt CRC/checksum; ``exception`` answers with an exception/error reply.
    """

    address: str
    points: tuple[PointConfig, ...]
    fault: str = "none"
    device_type: int | None = None


def point_constants(point: PointConfig) -> tuple[float, float]:
    """(offset, rate per hour) for a counter; (mean, amplitude) otherwise — in scaled units."""
    h = zlib.crc32(point.code.encode())
    if point.counter:
        offset = 1000.0 + (h % 9000)          # 1000..9999 units at T0
        rate = 0.1 + ((h >> 8) % 200) / 10.0  # 0.1..20 units per hour
        return offset, rate
    label = f"{point.key} {point.name}".lower()
    if point.unit == "V":                  # a 220/380 V system (GB/T 156-2017), phase voltages
        mean = 220.0 + (h % 20)
        return mean, mean * 0.02
    if point.unit == "Hz":                 # 50 Hz within its normal ±0.2 Hz (GB/T 15945-2008)
        return 50.0, 0.05
    if point.unit in ("", "1") and (point.key == "pf" or "power factor" in label):
        return 0.90 + (h % 8) / 100.0, 0.02
    if point.unit == "°C":                 # a water or heating circuit
        return 20.0 + (h % 60), 2.0
    mean = 10.0 + (h % 500)
    return mean, mean * 0.1


def point_value(point: PointConfig, t: float) -> float:
    """The value ``point`` shows at Unix time ``t`` (seconds), in its scaled unit."""
    a, b = point_constants(point)
    if point.counter:
        value = a + b * max(0.0, t - T0) / 3600.0
        if point.counter_max:
            value %= point.counter_max
        return value
    return a + b * math.sin(2 * math.pi * (t % 3600.0) / 3600.0)
