"""The unified standard both ends speak: readings, periods, energy types, identities.

Pure functions and data, no I/O beyond reading the package's own data files (and a site's
energy-factor override file when one is named).
"""

from ._credit import (
    CREDIT_ALPHABET,
    CreditCodeError,
    credit_check_char,
    make_credit_code,
    org_code_check_char,
    validate_credit_code,
)
from ._energy import ENERGY_CATEGORIES, EnergyType, load_energy_types, to_tce
from ._identifiers import (
    DATA_CLASSES,
    PROVINCE_CODES,
    TOPIC_ROOT,
    DataItemCode,
    Direction,
    Topic,
    parse_data_item_code,
    parse_topic,
    topic,
    topic_filter,
    validate_gateway_id,
    validate_kind,
    validate_point_code,
    validate_region_code,
)
from ._reading import Period, Quality, Reading, period_end, period_start
from ._time import CST, from_ms, month_start, next_month_start, parse_time, to_ms, to_rfc3339

__all__ = [
    "CREDIT_ALPHABET",
    "CST",
    "DATA_CLASSES",
    "ENERGY_CATEGORIES",
    "PROVINCE_CODES",
    "TOPIC_ROOT",
    "CreditCodeError",
    "DataItemCode",
    "Direction",
    "EnergyType",
    "Period",
    "Quality",
    "Reading",
    "Topic",
    "credit_check_char",
    "from_ms",
    "load_energy_types",
    "make_credit_code",
    "month_start",
    "next_month_start",
    "org_code_check_char",
    "parse_data_item_code",
    "parse_time",
    "parse_topic",
    "period_end",
    "period_start",
    "to_ms",
    "to_rfc3339",
    "to_tce",
    "topic",
    "topic_filter",
    "validate_credit_code",
    "validate_gateway_id",
    "validate_kind",
    "validate_point_code",
    "validate_region_code",
]
