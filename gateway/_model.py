"""Typed, frozen configuration objects of the gateway.

Built once by ``gateway._config.load_config`` from TOML (and profiles); everything else reads
these and never the raw TOML. Field names follow the TOML keys in CONTRACT.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from protocol import EnergyType

__all__ = [
    "BUS_KINDS",
    "DATA_TYPES",
    "BusConfig",
    "DestinationConfig",
    "GatewayConfig",
    "GatewaySection",
    "MeterConfig",
    "PointConfig",
    "StoreConfig",
]

BUS_KINDS = ("modbus-rtu", "modbus-tcp", "dlt645", "cjt188")
DATA_TYPES = ("int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64")


@dataclass(frozen=True, slots=True)
class PointConfig:
    """One value read from a meter.

    Modbus points use ``register``/``function``/``type``/orders; DL/T 645 and CJ/T 188 points
    use ``di`` (and ``field`` where one reply carries several values, e.g. CJ/T 188 ``901F``).
    The raw value is multiplied by ``scale``.
    """

    code: str
    key: str = ""                      # name inside a profile; inline points: same as code
    name: str = ""
    register: int | None = None
    function: str = "holding"          # holding | input
    type: str = "uint16"
    word_order: str = "big"            # order of 16-bit registers in multi-register values
    byte_order: str = "big"            # order of the two bytes inside each register
    scale: float = 1.0
    unit: str = ""
    counter: bool = False              # cumulative: also yields 15min/hour/day/month
    energy: str | None = None          # energy type key (protocol energy table)
    di: str | None = None              # DL/T 645: 8 hex digits; CJ/T 188: 4 hex digits
    field: str | None = None           # which value of a multi-value reply (CJ/T 188)
    max_rate: float | None = None      # plausibility: largest credible consumption per hour
    counter_max: float | None = None   # value at which the counter wraps (after scale)
    plausible: tuple[float, float] | None = None   # [low, high] a value can be (after scale)

    @property
    def register_count(self) -> int:
        """Registers a Modbus value of this type occupies."""
        return {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}.get(self.type, 4)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """A serial bus or a TCP endpoint. Serial buses use ``port`` (a device path);
    TCP ones (modbus-tcp, and dlt645/cjt188 through a serial server) ``host`` + ``tcp_port``."""

    name: str
    kind: str
    port: str | None = None
    host: str | None = None
    tcp_port: int | None = None
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout: float = 1.0
    retries: int = 1

    @property
    def is_tcp(self) -> bool:
        return self.host is not None


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """A meter on a bus. ``address``: Modbus unit id as text ("1"), DL/T 645 12 digits,
    CJ/T 188 14 digits. ``device_type`` is CJ/T 188's T byte (e.g. 0x10 cold water, 0x20 heat)."""

    name: str
    bus: str
    address: str
    points: tuple[PointConfig, ...]
    interval: int = 60
    profile: str | None = None
    device_type: int | None = None
    offline_after: int = 3             # consecutive failed cycles before the meter is offline

    @property
    def unit_id(self) -> int:
        return int(self.address)


@dataclass(frozen=True, slots=True)
class DestinationConfig:
    """A platform the gateway reports to (province, national, head office: 一端多传).

    ``url`` is ``mqtts://host:port`` (TLS, server verified against ``ca_file``; the gateway
    authenticates with ``cert_file``/``key_file``) or, with ``insecure``, ``mqtt://``.
    ``rate_limit``: batches per second at most; ``max_inflight``: batches published and not yet
    acknowledged (PUBACK) at most; ``keepalive``: MQTT keepalive seconds (a silent link is
    noticed after 1.5 times this).
    """

    name: str
    url: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False
    rate_limit: float = 50.0
    max_inflight: int = 64
    keepalive: int = 30

    @property
    def host(self) -> str:
        from urllib.parse import urlsplit

        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return self.url.startswith("mqtts://")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    retention_days: int = 200          # ≥ 6 months of history by default
    disk_budget_mb: int = 2048         # the store never grows past this on disk
    full_resolution_days: int = 31     # then instant readings are kept on the 15-minute grid


@dataclass(frozen=True, slots=True)
class GatewaySection:
    """``key_file``/``cert_file``: the gateway's identity; batches are signed with this key
    (the one its TLS certificate holds). Default: the first destination's."""

    id: str
    unit: str
    data_dir: Path
    require_time_sync: bool = True
    key_file: Path | None = None
    cert_file: Path | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    source: Path
    gateway: GatewaySection
    buses: tuple[BusConfig, ...]
    meters: tuple[MeterConfig, ...]
    destinations: tuple[DestinationConfig, ...] = ()
    store: StoreConfig = field(default_factory=StoreConfig)
    #: energy types with their tce factors, the site's ``[energy.*]`` overrides applied
    energy: Mapping[str, EnergyType] = field(default_factory=lambda: MappingProxyType({}))

    def bus(self, name: str) -> BusConfig:
        for b in self.buses:
            if b.name == name:
                return b
        raise KeyError(name)
