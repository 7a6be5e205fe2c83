"""What the simulated fleet is (bench/bench_fleet.py): identities, certificates, the readings a
gateway sends each quarter, and when it sends them.

Shared by the benchmark's parent process and its publisher processes, so both derive the same
fleet from a gateway's index alone. Pure functions, except :func:`fleet_pki`, which makes (once)
and loads the certificate cache.

Time is compressed: one *quarter* of the benchmark (``quarter`` seconds of wall time, default
30) stands for a quarter hour of the field. Quarter ``k`` (0, 1, …) starts at ``t0 + k *
quarter``; every gateway publishes its batch ``seq = k + 1`` at ``offset(i, k)`` seconds into
it, spread uniformly over the first ``spread`` seconds — the quarter-hour burst, where every
gateway has just computed its 15-minute values and sends them at once. The readings carry the
field's time: quarter ``k`` is ``SIM_EPOCH + k * 15 min``.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from protocol import Period, Reading, make_credit_code
from provisioning import (
    gateway_common_name,
    load_cert,
    load_key,
    make_ca,
    make_collector_cert,
    make_crl,
    make_gateway_cert,
    make_server_cert,
    write_cert,
    write_crl,
    write_key,
)

__all__ = [
    "POINTS",
    "QUARTER_MS",
    "SIM_EPOCH",
    "FleetPki",
    "gateway_files",
    "identity",
    "offset",
    "readings",
]

log = logging.getLogger(__name__)

POINTS = 200                       # readings a gateway sends a quarter hour (the figure)
QUARTER_MS = 15 * 60 * 1000        # the field's reporting interval (DESIGN.md: every 15 minutes)
# The field time of quarter 0: a fixed quarter-hour boundary in the past (2026-11-01 00:00 CST),
# so the readings' keys are the same in every run and no timestamp is in the future.
SIM_EPOCH = 1_793_462_400_000
REGION = "320100"                  # GB/T 2260: Nanjing, Jiangsu (any valid code would do)
CACHE_VERSION = "v1"


def identity(i: int) -> tuple[str, str]:
    """(unit, gateway) of gateway ``i``: a valid unified social credit code of its own (GB 32100
    check characters computed by ``make_credit_code``) and ``GW`` + five digits."""
    return make_credit_code(REGION, f"FL{i:06d}"), f"GW{i:05d}"


def offset(i: int, k: int, spread: float, seed: int = 1) -> float:
    """Seconds into quarter ``k`` at which gateway ``i`` publishes: uniform over ``spread``."""
    return random.Random(f"{seed}:{i}:{k}").uniform(0.0, spread)


def readings(i: int, k: int, points: int = POINTS) -> tuple[Reading, ...]:
    """Gateway ``i``'s readings for quarter ``k``: half 15-minute consumption values, half
    instant samples (a counter's cumulative value), all at the quarter's start, with values a
    DL/T 645 meter gives (2 decimals: energy format XXXXXX.XX, DL/T 645-2007 appendix A)."""
    ts = SIM_EPOCH + k * QUARTER_MS
    out = []
    for p in range(points):
        base = 1000.0 + (i * 7919 + p * 104_729) % 900_000 / 10
        step = 1.0 + (i + p) % 97 / 10
        if p % 2:
            value, period = round(step + (k * 31 + p) % 13 / 100, 2), Period.MIN15
        else:
            value, period = round(base + k * step, 2), Period.INSTANT
        out.append(Reading(f"{p + 1:016d}", period, ts, value))
    return tuple(out)


def gateway_files(directory: Path, i: int) -> tuple[Path, Path]:
    """(certificate, key) paths of gateway ``i`` in the cache ``directory``."""
    return directory / "gateways" / f"{i:05d}.pem", directory / "gateways" / f"{i:05d}.key"


@dataclass(frozen=True)
class FleetPki:
    """The cached certificate authority and identities (``fleet_pki``)."""

    dir: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_path: Path
    server_cert_path: Path
    server_key_path: Path
    crl_path: Path
    collector_cert_path: Path
    collector_key_path: Path

    @classmethod
    def load_or_make(cls, cache: Path, gateways: int, collector: str) -> FleetPki:
        """The CA, a server certificate for 127.0.0.1, the collector's identity (CN
        ``collector-<collector>``) and gateways ``0 .. gateways-1`` (ECDSA P-256 each), made
        once and kept in ``cache`` (``<tmp>/kemon-bench-fleet/pki-v1``). Only missing gateway
        certificates are made; a CA that expires within 30 days starts a new cache."""
        d = cache / f"pki-{CACHE_VERSION}"
        ca_path, ca_key_path = d / "ca.pem", d / "ca.key"
        now = dt.datetime.now(dt.UTC)
        fresh = not ca_path.exists()
        if not fresh:
            ca_cert = load_cert(ca_path)
            fresh = ca_cert.not_valid_after_utc < now + dt.timedelta(days=30)
        if fresh:
            (d / "gateways").mkdir(parents=True, exist_ok=True)
            for old in (d / "gateways").iterdir():
                old.unlink()
            ca_key, ca_cert = make_ca("Kemon Fleet Bench CA",
                                      not_before=now - dt.timedelta(days=1))
            server_key, server_cert = make_server_cert(ca_key, ca_cert, ["127.0.0.1",
                                                                         "localhost"])
            col_key, col_cert = make_collector_cert(ca_key, ca_cert, collector)
            write_cert(d / "server.pem", server_cert, overwrite=True)
            write_key(d / "server.key", server_key, overwrite=True)
            write_cert(d / "collector.pem", col_cert, overwrite=True)
            write_key(d / "collector.key", col_key, overwrite=True)
            write_crl(d / "ca.crl", make_crl(ca_key, ca_cert, ()), overwrite=True)
            write_key(ca_key_path, ca_key, overwrite=True)
            write_cert(ca_path, ca_cert, overwrite=True)     # last: marks the cache complete
        ca_key = load_key(ca_key_path)
        ca_cert = load_cert(ca_path)
        made = 0
        for i in range(gateways):
            cert_path, key_path = gateway_files(d, i)
            if cert_path.exists() and key_path.exists():
                continue
            unit, gw = identity(i)
            key, cert = make_gateway_cert(ca_key, ca_cert, unit, gw)
            write_key(key_path, key, overwrite=True)
            write_cert(cert_path, cert, overwrite=True)
            made += 1
        if made:
            log.info("made %d gateway certificates in %s", made, d)
        return cls(dir=d, ca_key=ca_key, ca_path=ca_path, server_cert_path=d / "server.pem",
                   server_key_path=d / "server.key", crl_path=d / "ca.crl",
                   collector_cert_path=d / "collector.pem",
                   collector_key_path=d / "collector.key")


def common_name(i: int) -> str:
    """Gateway ``i``'s certificate CN (the broker's user name): ``<unit>/<gateway>``."""
    return gateway_common_name(*identity(i))
