"""The collector a province (or the national platform) runs: verification and storage so far;
ingest, relay and the commands come next (issue "Step 3").

Collector code never imports ``gateway``; what both need is in ``protocol``.
"""

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
    "GatewayRow",
    "GatewayStatus",
    "Lookups",
    "Quarantined",
    "Storage",
    "StorageError",
    "StorageURLError",
    "StorageUnavailableError",
    "StoredReading",
    "VerifiedBatch",
    "Verifier",
    "open_storage",
]
