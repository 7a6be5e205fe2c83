"""The collector a province (or the national platform) runs: verification and storage so far;
ingest, relay and the commands come next (issue "Step 3").

Collector code never imports ``gateway``; what both need is in ``protocol``.
"""

from ._config import ConfigError, load_config
from ._model import BrokerConfig, CollectorConfig, CollectorSection, UpstreamConfig
from ._records import GatewayStatus, Quarantined, VerifiedBatch
from ._storage import (
    GatewayRow,
    Storage,
    StorageError,
    StorageUnavailableError,
    StorageURLError,
    StoredReading,
    open_storage,
)
from ._verify import Lookups, Verifier

__all__ = [
    "BrokerConfig",
    "CollectorConfig",
    "CollectorSection",
    "ConfigError",
    "GatewayRow",
    "GatewayStatus",
    "Lookups",
    "Quarantined",
    "Storage",
    "StorageError",
    "StorageURLError",
    "StorageUnavailableError",
    "StoredReading",
    "UpstreamConfig",
    "VerifiedBatch",
    "Verifier",
    "load_config",
    "open_storage",
]
