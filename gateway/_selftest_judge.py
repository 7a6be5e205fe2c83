"""The self-test's judgements, pure: given what was measured (the clock's state, a value read
for a point, a certificate, free space), pass, warn or fail with a one-line reason. No I/O here;
``gateway._selftest`` measures and calls these.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from ._clock import EARLIEST_TRUSTED, ClockState
from ._model import PointConfig
from ._selftest_report import Status

__all__ = ["CERT_WARN_DAYS", "Outcome", "implausible", "judge_certificate", "judge_clock",
           "judge_disk"]

CERT_WARN_DAYS = 30        # a certificate with fewer days left is a warning

Outcome = tuple[Status, str, dict[str, Any]]


# --- clock --------------------------------------------------------------------------------


def judge_clock(state: ClockState, *, require_sync: bool) -> Outcome:
    """Pass when synchronised and after the earliest trusted time; a clock that is merely not
    synchronised is a warning when the configuration says ``require_time_sync = false``."""
    stamp = datetime.fromtimestamp(state.now, UTC).isoformat(timespec="seconds")
    measured: dict[str, Any] = {"now_utc": stamp, "source": state.source,
                                "synchronised": state.synchronised}
    for key, value in (("max_error_ms", state.max_error_s), ("est_error_ms", state.est_error_s),
                       ("offset_ms", state.offset_s)):
        if value is not None:
            measured[key] = round(value * 1000, 3)
    if state.now < EARLIEST_TRUSTED:
        return (Status.FAIL, f"the clock reads {stamp}, before 2020: it has not been set "
                "(no RTC and no NTP yet?)", measured)
    if state.synchronised:
        extra = ""
        if state.est_error_s is not None and state.max_error_s is not None:
            extra = (f"; estimated error {state.est_error_s * 1000:.1f} ms, "
                     f"maximum {state.max_error_s * 1000:.1f} ms")
        if state.offset_s is not None:
            extra += f"; offset {state.offset_s * 1000:+.3f} ms"
        return Status.PASS, f"synchronised ({state.source}){extra}", measured
    why = ("the kernel reports it unsynchronised" if state.synchronised is False
           else "cannot tell (no adjtimex, no timedatectl)")
    if not require_sync:
        return (Status.WARN, f"not synchronised: {why}; allowed only because "
                "require_time_sync = false (tests and demos)", measured)
    return (Status.FAIL, f"not synchronised: {why}; readings would be stamped clock_unsynced "
            "— check NTP (timedatectl status, chronyc tracking) and the network", measured)


# --- plausible values ---------------------------------------------------------------------

_INF = math.inf
#: Plausible ranges by the point's unit (after scaling).
_RANGES: dict[str, tuple[float, float]] = {
    # GB/T 156-2017 standard voltages: the highest system voltage in China is 1100 kV
    # (1000 kV UHV), so no primary-side voltage is above it.
    "V": (0.0, 1.1e6), "kV": (0.0, 1100.0),
    # GB/T 15945-2008: nominal 50 Hz, normal deviation ±0.2 Hz (±0.5 Hz small systems);
    # 45–65 Hz also admits 60 Hz equipment and an islanded generator.
    "Hz": (45.0, 65.0),
    # Sane defaults (no standard): the largest currents and powers an enterprise meters.
    "A": (0.0, 1e5), "kA": (0.0, 100.0),
    "W": (-1e9, 1e9), "kW": (-1e6, 1e6), "MW": (-1e3, 1e3),
    "var": (-1e9, 1e9), "kvar": (-1e6, 1e6), "VA": (0.0, 1e9), "kVA": (0.0, 1e6),
    "°C": (-50.0, 200.0),             # water, heat and steam circuits a CJ/T 188 meter sees
    "m³/h": (-1e6, 1e6), "t/h": (-1e5, 1e5),
    # Accumulated quantities never go below zero.
    **dict.fromkeys(("Wh", "kWh", "MWh", "varh", "kvarh", "kJ", "MJ", "GJ", "m³", "L", "t",
                     "kg"), (0.0, _INF)),
}
_POWER_FACTOR = (-1.0, 1.0)


def _range_for(point: PointConfig) -> tuple[float, float] | None:
    if point.plausible is not None:           # the configuration's own bounds come first
        return point.plausible
    if point.unit in _RANGES:
        return _RANGES[point.unit]
    label = f"{point.key} {point.name}".lower()
    if point.unit in ("", "1") and (point.key == "pf" or "power factor" in label
                                    or "功率因数" in label):
        return _POWER_FACTOR
    return None


def implausible(point: PointConfig, value: float) -> str | None:
    """Why ``value`` read for ``point`` cannot be right, or None when it is plausible."""
    unit = f" {point.unit}" if point.unit else ""
    if math.isnan(value):
        return "NaN (not a number)"
    if math.isinf(value):
        return "infinite"
    if point.counter and value < 0:
        return f"{value:.6g}{unit}: a cumulative counter cannot be negative"
    if point.counter_max is not None and value >= point.counter_max:
        return f"{value:.6g}{unit}: at or above the counter's wrap value {point.counter_max:g}"
    if point.type.startswith("float") and 0 < abs(value) < 1e-30:
        return (f"{value:.3g}{unit}: a vanishingly small float — the register word or byte "
                "order is probably wrong")
    bounds = _range_for(point)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        low, high = bounds
        span = f"≥ {low:g}" if high == _INF else f"{low:g} to {high:g}"
        return f"{value:.6g}{unit}, outside the plausible {span}{unit}"
    return None


# --- certificate and disk -----------------------------------------------------------------

def judge_certificate(cert: x509.Certificate, now: float) -> Outcome:
    """Valid now, with at least ``CERT_WARN_DAYS`` days left to pass."""
    begins, ends = cert.not_valid_before_utc, cert.not_valid_after_utc
    at = datetime.fromtimestamp(now, UTC)
    days = (ends - at).total_seconds() / 86400
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    measured: dict[str, Any] = {
        "subject": str(cn[0].value) if cn else cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(), "serial": f"{cert.serial_number:x}",
        "not_before": begins.isoformat(), "not_after": ends.isoformat(),
        "days_left": math.floor(days)}
    if at < begins:
        return (Status.FAIL, f"not valid yet: valid from {begins:%Y-%m-%d %H:%M} UTC "
                "(or the clock is wrong)", measured)
    if days <= 0:
        return Status.FAIL, f"expired on {ends:%Y-%m-%d} — issue a new one", measured
    text = f"{measured['subject']}, valid until {ends:%Y-%m-%d} ({math.floor(days)} days left)"
    if days < CERT_WARN_DAYS:
        return Status.WARN, f"{text}: renew it soon", measured
    return Status.PASS, text, measured


def judge_disk(free_bytes: int, store_bytes: int, retention_bytes: int, budget_bytes: int,
               days_that_fit: float, retention_days: int) -> Outcome:
    """Room for what the store will still grow to: its final size (the retention's estimate,
    at most the budget) less what it takes already."""
    mb = 1024 * 1024
    target = min(retention_bytes, budget_bytes)
    need = max(0, target - store_bytes)
    measured = {"free_bytes": free_bytes, "store_bytes": store_bytes,
                "store_target_bytes": target, "still_needed_bytes": need,
                "budget_bytes": budget_bytes, "retention_bytes": retention_bytes}
    text = (f"{free_bytes / mb:,.0f} MB free; the store takes {store_bytes / mb:,.1f} MB and "
            f"will grow to about {target / mb:,.0f} MB")
    if free_bytes < need:
        return (Status.FAIL, f"{text}: {need / mb:,.0f} MB more needed — free space or lower "
                "store.disk_budget_mb", measured)
    if retention_bytes > budget_bytes:
        return (Status.WARN, f"{text}; the budget holds only about {days_that_fit:.0f} of "
                f"retention_days = {retention_days} days", measured)
    return Status.PASS, text, measured
