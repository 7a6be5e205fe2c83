"""The unified standard both ends speak: readings, periods, energy types, identities.

Pure functions and data, no I/O beyond reading the package's own data files.
"""

from ._reading import Period, Quality, Reading, period_end, period_start
from ._time import CST, from_ms, month_start, next_month_start, parse_time, to_ms, to_rfc3339

__all__ = [
    "CST",
    "Period",
    "Quality",
    "Reading",
    "from_ms",
    "month_start",
    "next_month_start",
    "parse_time",
    "period_end",
    "period_start",
    "to_ms",
    "to_rfc3339",
]
