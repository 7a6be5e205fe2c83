"""Typed, frozen configuration of a collector (CONTRACT.md "Collector configuration").

Built once by ``collector._config.load_config`` from TOML; field names follow the TOML keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrokerConfig", "CollectorConfig", "CollectorSection", "UpstreamConfig"]


@dataclass(frozen=True, slots=True)
class CollectorSection:
    """``role``: province | national. ``region``: GB/T 2260 code. ``database``: a storage URL
    (``sqlite:///abs.db``, ``sqlite:relative.db`` — relative to the configuration file — or
    ``postgresql://…``). ``trusted_ca``: CA certificates gateway certificates must chain to
    (default: the broker's ``ca_file``). ``queue``: messages held between the broker and the
    database at most (backpressure beyond it reaches the broker)."""

    role: str
    region: str
    database: str
    trusted_ca: tuple[Path, ...] = ()
    queue: int = 10_000


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    share_group: str = "collectors"
    client_id: str | None = None       # default: derived from the certificate and host
    keepalive: int = 30
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """The next level (province → national): verified batches are relayed there unchanged."""

    name: str
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    rate_limit: float = 200.0
    max_inflight: int = 64
    keepalive: int = 30


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    source: Path
    collector: CollectorSection
    broker: BrokerConfig
    upstreams: tuple[UpstreamConfig, ...] = ()
