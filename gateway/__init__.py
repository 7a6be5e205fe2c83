"""The edge gateway: meters in, a durable local store, consumption on the CST grid.

What the gateway offers to the ``kemon`` command, to tests and to later steps (the uplink reads
the store's readings in id order to seal them into batches).
"""

from ._config import load_config
from ._consumption import ConsumptionTracker, CounterSpec
from ._downlink import Downlink
from ._errors import ClockError, ConfigError, GatewayError
from ._model import (
    BusConfig,
    DestinationConfig,
    GatewayConfig,
    GatewaySection,
    MeterConfig,
    PointConfig,
    StoreConfig,
)
from ._outbox import Outbox
from ._poller import BusPoller, MeterStats
from ._profiles import Profile, builtin_profiles, load_profile
from ._runner import Gateway
from ._store import Store, StoreError, StoreFullError, StoreReadOnlyError
from ._uplink import Uplink

__all__ = [
    "BusConfig",
    "BusPoller",
    "ClockError",
    "ConfigError",
    "ConsumptionTracker",
    "CounterSpec",
    "DestinationConfig",
    "Downlink",
    "Gateway",
    "GatewayConfig",
    "GatewayError",
    "GatewaySection",
    "MeterConfig",
    "MeterStats",
    "Outbox",
    "PointConfig",
    "Profile",
    "Store",
    "StoreConfig",
    "StoreError",
    "StoreFullError",
    "StoreReadOnlyError",
    "Uplink",
    "builtin_profiles",
    "load_config",
    "load_profile",
]
