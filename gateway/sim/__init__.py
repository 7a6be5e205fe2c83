"""Simulated meters (``kemon sim``): Modbus TCP/RTU, DL/T 645 and CJ/T 188 servers whose values
are a known function of time, for training, demos and tests."""

from ._cjt188_sim import serve_cjt188
from ._dlt645_sim import serve_dlt645
from ._modbus_sim import serve_modbus_rtu, serve_modbus_tcp
from ._values import FAULTS, SimMeter, point_value

__all__ = [
    "FAULTS",
    "SimMeter",
    "point_value",
    "serve_cjt188",
    "serve_dlt645",
    "serve_modbus_rtu",
    "serve_modbus_tcp",
]
