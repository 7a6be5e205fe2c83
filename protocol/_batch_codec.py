"""The compressed body of a sealed batch: readings as columns, then zlib.

Pure functions, no I/O. ``encode_body`` turns readings (and a batch's optional ``info``) into
the bytes that travel inside the envelope (``protocol._batch``); ``decode_body`` turns them
back, with every limit and schema rule checked. Both raise plain ``ValueError`` with a one-line
reason; the envelope turns that into ``BatchFormatError``.

Why this layout (figures in docs/batch-format.md, measured by bench/bench_encoding.py): at 200
readings a batch, the readings' point codes, periods, times and quality words are almost all
repetition, so they go in once (tables) or as small integers (indexes, time deltas); what is
left is the values, and float64 values are what a general-purpose compressor cannot squeeze.
So each value is written in the smallest of three exact forms:

- **decimal**: a value whose shortest repr has at most 9 significant digits (what a DL/T 645
  meter's BCD gives: ``157904.828``, ``230.4``) is written as an integer mantissa and a power
  of ten; the mantissa as a delta from the same point's previous decimal value when the power
  is the same (a counter moving by a few units, a voltage by a few tenths): one or two bytes;
- **float32**: a value a float32 holds exactly (what a Modbus ``float32`` register gives:
  ``230.39999389648438``) is written as its 4 bytes, XORed with the same point's previous
  float32 bits (sign, exponent and top mantissa bits cancel and compress away);
- **float64**: anything else (a scaled integer register, a consumption difference), as its 8
  bytes XORed with the same point's previous float64 bits.

The columns are one msgpack array (msgspec; decoded straight into a typed Struct, so a wrong
schema fails at once and nothing nests), compressed with zlib level 6 (level 9 measured no
smaller on this data).

Body (msgpack array, in this order)::

    info        map (JSON-like, at most 3 containers deep below it), or nil
    points      [str]   the distinct point codes, in order of first use
    qualities   [str]   the distinct quality words, in order of first use
    base        int     the first reading's ts (ms since the epoch)
    point_ix    [int]   per reading: index into points
    period_ix   bin     per reading: 0 instant, 1 15min, 2 hour, 3 day, 4 month
    quality_ix  [int]   per reading: index into qualities
    dts         [int]   per reading: ts minus the previous reading's ts (the first: 0)
    kinds       bin     per reading: 0 decimal, 1 float32, 2 float64
    exps        [int]   per decimal value: the power of ten
    mants       [int]   per decimal value: mantissa, or its delta (see above)
    f32         bin     4 bytes per float32 value, big-endian, XORed with the previous
    f64         bin     8 bytes per float64 value, big-endian, XORed with the previous

"The previous" value of a reading is the last value of the same kind with the same point and
period earlier in the batch (0 when there is none).
"""

from __future__ import annotations

import logging
import math
import re
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, ClassVar

import msgspec

from ._identifiers import validate_point_code
from ._reading import Period, Quality, Reading

__all__ = [
    "INFO_MAX_BYTES",
    "INFO_MAX_DEPTH",
    "INFO_MAX_ITEMS",
    "MAX_BODY_BYTES",
    "MAX_READINGS",
    "TS_MAX",
    "TS_MIN",
    "ReadingColumns",
    "check_info",
    "check_ts",
    "decode_body",
    "decode_columns",
    "encode_body",
]

log = logging.getLogger(__name__)

MAX_READINGS = 10_000                 # per batch: bounds memory and time for a hostile batch
MAX_BODY_BYTES = 16 * 1024 * 1024     # decompressed body: a zip bomb stops here
ZLIB_LEVEL = 6                        # bench/bench_encoding.py: level 9 gains nothing here
TS_MIN = 0                            # 1970-01-01
TS_MAX = 253_402_300_799_999          # 9999-12-31T23:59:59.999Z: RFC 3339 years have 4 digits
INFO_MAX_ITEMS = 32                   # per map or list
INFO_MAX_KEY = 64
INFO_MAX_TEXT = 1024
INFO_MAX_DEPTH = 3                    # containers below the top-level map
INFO_MAX_BYTES = 8192                 # the whole info, as msgpack

_PERIODS: tuple[Period, ...] = tuple(Period)           # index on the wire = position here
_PERIOD_IX = {p: i for i, p in enumerate(_PERIODS)}
_QUALITIES = {q.value: q for q in Quality}
_QUALITY_WORD = re.compile(r"[a-z][a-z0-9_]{0,31}")     # Quality says: more words may be added

_DECIMAL, _F32, _F64 = 0, 1, 2
_DECIMAL_DIGITS = 9                  # beyond this a mantissa costs as much as a float's bytes
_DECIMAL_LIMIT = 10**_DECIMAL_DIGITS
_EXP_MIN, _EXP_MAX = -345, 308       # 5e-324 is 5 * 10**-324; 1e308 fits; outside: not finite
_F32_STRUCT = struct.Struct(">f")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64_STRUCT = struct.Struct(">d")

# info's schema bounds its nesting, so a hostile body cannot nest deeper than this
_Scalar = str | int | float | bool | None
_Info1 = _Scalar | list[_Scalar] | dict[str, _Scalar]
_Info2 = _Scalar | list[_Info1] | dict[str, _Info1]
_Info3 = _Scalar | list[_Info2] | dict[str, _Info2]


class _Body(msgspec.Struct, array_like=True, forbid_unknown_fields=True):
    info: dict[str, _Info3] | None
    points: list[str]
    qualities: list[str]
    base: int
    point_ix: list[int]
    period_ix: bytes
    quality_ix: list[int]
    dts: list[int]
    kinds: bytes
    exps: list[int]
    mants: list[int]
    f32: bytes
    f64: bytes


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(_Body)


# ---------------------------------------------------------------- checks shared with the envelope

def check_ts(name: str, ts: object) -> int:
    """``ts`` as int milliseconds in [TS_MIN, TS_MAX]; ``ValueError`` naming ``name`` otherwise."""
    if type(ts) is not int or not TS_MIN <= ts <= TS_MAX:
        raise ValueError(f"{name} {ts!r} is not a time in ms between {TS_MIN} and {TS_MAX}")
    return ts


def check_info(info: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A batch's ``info`` as plain dicts and lists, or ``None``; ``ValueError`` when it is not
    JSON-like (text, numbers, true/false, null, lists, string-keyed maps), nests containers
    more than 3 deep below the top, has more than 32 items in a container, a key longer than 64
    or a text longer than 1,024 characters, a number that is not finite or not 64-bit, or
    encodes to more than 8 KiB."""
    if info is None:
        return None
    if not isinstance(info, Mapping):
        raise ValueError(f"info must be a mapping, not {type(info).__name__}")
    out = _info_value("info", info, 0)
    if len(_ENCODER.encode(out)) > INFO_MAX_BYTES:
        raise ValueError(f"info is larger than {INFO_MAX_BYTES} bytes")
    return out  # type: ignore[no-any-return]


def _info_value(path: str, value: object, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > INFO_MAX_TEXT:
            raise ValueError(f"{path} is longer than {INFO_MAX_TEXT} characters")
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError(f"{path} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path} is not finite")
        return value
    if not isinstance(value, Mapping | list | tuple):
        raise ValueError(f"{path} is a {type(value).__name__}: only text, numbers, "
                         "true/false, null, lists and maps")
    if depth > INFO_MAX_DEPTH:
        raise ValueError(f"{path} nests containers more than {INFO_MAX_DEPTH} deep")
    if len(value) > INFO_MAX_ITEMS:
        raise ValueError(f"{path} has {len(value)} items, at most {INFO_MAX_ITEMS}")
    if isinstance(value, list | tuple):
        return [_info_value(f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value)]
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not 1 <= len(key) <= INFO_MAX_KEY:
            raise ValueError(f"{path} key {key!r} is not text of 1-{INFO_MAX_KEY} characters")
        out[key] = _info_value(f"{path}[{key!r}]", item, depth + 1)
    return out


def _check_quality(word: object) -> str:
    if not isinstance(word, str) or not _QUALITY_WORD.fullmatch(word):
        raise ValueError(f"quality {word!r} is not a word of 1-32 of a-z 0-9 _ "
                         "(e.g. good, comm_error)")
    return _QUALITIES.get(word, word)


_VALID_POINTS: dict[object, str] = {}    # point codes already validated, up to _VALID_KEEP
_VALID_KEEP = 65_536


def _check_point(code: object) -> str:
    known = _VALID_POINTS.get(code) if type(code) is str else None
    if known is not None:                  # a site's codes repeat in every batch it sends
        return known
    try:
        valid = validate_point_code(code)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    if len(_VALID_POINTS) < _VALID_KEEP:
        _VALID_POINTS[code] = valid
    return valid


# ---------------------------------------------------------------- values

def _decimal(x: float) -> tuple[int, int] | None:
    """``(mantissa, exponent)`` whose value ``mantissa * 10**exponent`` is the decimal that
    ``repr(x)`` writes (so it converts back to exactly ``x``), or ``None`` when that needs more
    than 9 digits or would lose the sign of -0.0."""
    text = repr(x)
    if len(text) > _DECIMAL_DIGITS + 3 and "e" not in text:
        return None                          # fast path: a float32's 17-digit repr
    if "e" not in text:                      # the common case: 157904.828, 230.4, 50.0
        whole, _, frac = text.partition(".")
        if frac == "0":
            if len(whole) > _DECIMAL_DIGITS + 1:
                return None
            m, e = int(whole), 0
        else:
            if len(whole) + len(frac) > _DECIMAL_DIGITS + 1:
                return None
            m, e = int(whole + frac), -len(frac)
    else:                                    # 1e-05, 1.5e+300, 5e-324
        mant, _, exp_text = text.partition("e")
        whole, _, frac = mant.partition(".")
        m, e = int(whole + frac), int(exp_text) - len(frac)
    if not -_DECIMAL_LIMIT < m < _DECIMAL_LIMIT or (m == 0 and text[0] == "-"):
        return None
    return m, e


_POW10: list[int] = [10**k for k in range(-_EXP_MIN + 1)]
_POW10_FLOAT = [float(10**k) for k in range(23)]    # 10**22 is the largest exact double power


def _from_decimal(m: int, e: int) -> float:
    """The float nearest ``m * 10**e``: exactly the float whose repr the pair was taken from.

    Python's int/int division and int-to-float conversion both round correctly; so does IEEE
    division of two exact doubles (|m| < 10**9 and 10**k for k <= 22 are exact)."""
    if not -_DECIMAL_LIMIT < m < _DECIMAL_LIMIT:
        raise ValueError(f"decimal mantissa {m} has more than {_DECIMAL_DIGITS} digits")
    if e < 0:
        if e >= -22:
            return m / _POW10_FLOAT[-e]
        if e < _EXP_MIN:
            raise ValueError(f"decimal exponent {e} out of range")
        return m / _POW10[-e]
    if e > _EXP_MAX:
        raise ValueError(f"decimal exponent {e} out of range")
    try:
        return float(m * _POW10[e])
    except OverflowError:
        raise ValueError(f"value {m}e{e} is not finite") from None


# ---------------------------------------------------------------- encode

def encode_body(readings: Sequence[Reading], info: Mapping[str, Any] | None) -> bytes:
    """The compressed body for ``readings`` and ``info``; ``ValueError`` when one is invalid."""
    if len(readings) > MAX_READINGS:
        raise ValueError(f"{len(readings)} readings, at most {MAX_READINGS} a batch")
    checked_info = check_info(info)
    point_tab: dict[str, int] = {}
    quality_tab: dict[str, int] = {}
    point_ix: list[int] = []
    period_ix = bytearray()
    quality_ix: list[int] = []
    dts: list[int] = []
    kinds = bytearray()
    exps: list[int] = []
    mants: list[int] = []
    f32 = bytearray()
    f64 = bytearray()
    last_dec: dict[tuple[int, int], tuple[int, int]] = {}
    last_f32: dict[tuple[int, int], int] = {}
    last_f64: dict[tuple[int, int], int] = {}
    pack_f32, unpack_f32 = _F32_STRUCT.pack, _F32_STRUCT.unpack
    unpack_u32, pack_u32 = _U32.unpack, _U32.pack
    pack_f64, unpack_u64, pack_u64 = _F64_STRUCT.pack, _U64.unpack, _U64.pack
    isfinite, period_of = math.isfinite, _PERIOD_IX.get
    first = readings[0] if readings else None
    prev_ts = base = first.ts if type(first) is Reading else 0
    for i, r in enumerate(readings):
        if type(r) is not Reading:
            raise ValueError(f"reading {i} is a {type(r).__name__}, not a Reading")
        pi = point_tab.get(r.point)
        if pi is None:
            pi = point_tab[_check_point(r.point)] = len(point_tab)
        per = period_of(r.period)
        if per is None:
            raise ValueError(f"reading {i}: period {r.period!r} is not one of "
                             f"{', '.join(_PERIODS)}")
        qi = quality_tab.get(r.quality)
        if qi is None:
            qi = quality_tab[_check_quality(r.quality)] = len(quality_tab)
        ts = r.ts
        if type(ts) is not int or not TS_MIN <= ts <= TS_MAX:
            check_ts(f"reading {i}: ts", ts)
        value = r.value
        if type(value) is not float:
            value = _as_float(i, value)
        if not isfinite(value):
            raise ValueError(f"reading {i}: value {value!r} is not finite")
        point_ix.append(pi)
        period_ix.append(per)
        quality_ix.append(qi)
        dts.append(ts - prev_ts)
        prev_ts = ts
        key = (pi, per)
        dec = _decimal(value)
        if dec is not None:
            prev = last_dec.get(key)
            last_dec[key] = dec
            kinds.append(_DECIMAL)
            exps.append(dec[1])
            mants.append(dec[0] - prev[0] if prev is not None and prev[1] == dec[1] else dec[0])
            continue
        try:
            packed = pack_f32(value)
            single = unpack_f32(packed)[0] == value
        except OverflowError:              # beyond float32's range
            single = False
        if single:
            bits = unpack_u32(packed)[0]
            kinds.append(_F32)
            f32 += pack_u32(bits ^ last_f32.get(key, 0))
            last_f32[key] = bits
        else:
            bits = unpack_u64(pack_f64(value))[0]
            kinds.append(_F64)
            f64 += pack_u64(bits ^ last_f64.get(key, 0))
            last_f64[key] = bits
    body = _Body(info=checked_info, points=list(point_tab), qualities=list(quality_tab),
                 base=base, point_ix=point_ix, period_ix=bytes(period_ix),
                 quality_ix=quality_ix, dts=dts, kinds=bytes(kinds), exps=exps, mants=mants,
                 f32=bytes(f32), f64=bytes(f64))
    return zlib.compress(_ENCODER.encode(body), ZLIB_LEVEL)


def _as_float(i: int, value: object) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ValueError(f"reading {i}: value {value!r} is not a number")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"reading {i}: value {value!r} is too large") from None


# ---------------------------------------------------------------- decode

def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, MAX_BODY_BYTES)
    except zlib.error as exc:
        raise ValueError(f"body is not zlib data ({exc})") from None
    if inflater.unconsumed_tail:
        raise ValueError(f"body inflates to more than {MAX_BODY_BYTES} bytes")
    if not inflater.eof:
        raise ValueError("body is truncated zlib data")
    if inflater.unused_data:
        raise ValueError("body has bytes after its zlib stream")
    return raw


def _lengths(body: _Body, count: int) -> None:
    for name in ("point_ix", "period_ix", "quality_ix", "dts", "kinds"):
        if len(getattr(body, name)) != count:
            raise ValueError(f"column {name} has {len(getattr(body, name))} entries, "
                             f"the header says {count} readings")
    decimals = body.kinds.count(_DECIMAL)
    f32s = body.kinds.count(_F32)
    if decimals + f32s + body.kinds.count(_F64) != count:
        raise ValueError("column kinds holds a value kind other than 0, 1, 2")
    if len(body.exps) != decimals or len(body.mants) != decimals:
        raise ValueError(f"{decimals} decimal values but {len(body.exps)} exponents and "
                         f"{len(body.mants)} mantissas")
    if len(body.f32) != 4 * f32s or len(body.f64) != 8 * (count - decimals - f32s):
        raise ValueError("float columns do not match the value kinds")
    if len(body.points) > count or len(body.qualities) > count:
        raise ValueError("more table entries than readings")


def _values(kinds: bytes, point_ix: list[int], period_ix: bytes, body: _Body) -> list[float]:
    """Each reading's value, from its kind's column and the previous value of the same kind for
    the same point and period (module docstring)."""
    last_dec: dict[int, tuple[int, int]] = {}
    last_f32: dict[int, int] = {}
    last_f64: dict[int, int] = {}
    unpack_u32, pack_u32, unpack_f32 = _U32.unpack_from, _U32.pack, _F32_STRUCT.unpack
    unpack_u64, pack_u64, unpack_f64 = _U64.unpack_from, _U64.pack, _F64_STRUCT.unpack
    pow10, limit = _POW10_FLOAT, _DECIMAL_LIMIT
    exps, mants, f32, f64 = body.exps, body.mants, body.f32, body.f64
    di = i32 = i64 = 0
    values: list[float] = []
    append = values.append
    for kind, pi, per in zip(kinds, point_ix, period_ix, strict=True):
        key = pi << 3 | per                 # fewer than 8 periods
        if kind == _DECIMAL:
            e, m = exps[di], mants[di]
            di += 1
            prev = last_dec.get(key)
            if prev is not None and prev[1] == e:
                m += prev[0]
            last_dec[key] = (m, e)
            if -22 <= e < 0 and -limit < m < limit:     # _from_decimal's common case
                append(m / pow10[-e])
            else:
                append(_from_decimal(m, e))
        elif kind == _F32:
            bits = unpack_u32(f32, i32)[0] ^ last_f32.get(key, 0)
            i32 += 4
            last_f32[key] = bits
            append(unpack_f32(pack_u32(bits))[0])
        else:
            bits = unpack_u64(f64, i64)[0] ^ last_f64.get(key, 0)
            i64 += 8
            last_f64[key] = bits
            append(unpack_f64(pack_u64(bits))[0])
    return values


@dataclass(frozen=True, slots=True)
class ReadingColumns:
    """A batch's readings as the body holds them: column by column, each checked.

    Reading ``i`` is ``Reading(points[point_ix[i]], PERIODS[period_ix[i]], ts[i], values[i],
    qualities[quality_ix[i]])``: the tables (``points``, ``qualities``) hold each distinct
    point code and quality word once, in order of first use. For a consumer that needs columns
    rather than :class:`Reading` objects (the collector's storage: interned ids per table
    entry, then one ``map`` a column); :meth:`readings` builds the Reading tuples.
    """

    points: tuple[str, ...]
    qualities: tuple[str, ...]
    point_ix: list[int]
    period_ix: bytes
    quality_ix: list[int]
    ts: list[int]
    values: list[float]

    PERIODS: ClassVar[tuple[Period, ...]] = _PERIODS   # period_ix's table

    def __len__(self) -> int:
        return len(self.ts)

    def readings(self) -> tuple[Reading, ...]:
        """The readings, in batch order."""
        points, periods, qualities = self.points, _PERIODS, self.qualities
        new = tuple.__new__
        return tuple([new(Reading, row) for row in zip(
            [points[pi] for pi in self.point_ix], [periods[per] for per in self.period_ix],
            self.ts, self.values, [qualities[qi] for qi in self.quality_ix], strict=True)])

    @classmethod
    def of(cls, readings: Sequence[Reading]) -> ReadingColumns:
        """The columns of ``readings`` (already valid: a Batch's, as sealed or unsealed)."""
        point_tab: dict[str, int] = {}
        quality_tab: dict[str, int] = {}
        point_ix = [point_tab.setdefault(r.point, len(point_tab)) for r in readings]
        quality_ix = [quality_tab.setdefault(r.quality, len(quality_tab)) for r in readings]
        return cls(points=tuple(point_tab), qualities=tuple(quality_tab), point_ix=point_ix,
                   period_ix=bytes([_PERIOD_IX[r.period] for r in readings]),
                   quality_ix=quality_ix, ts=[r.ts for r in readings],
                   values=[r.value for r in readings])


def decode_columns(data: bytes, count: int) -> tuple[ReadingColumns, dict[str, Any] | None]:
    """The readings (as columns) and info in a compressed body that the header says holds
    ``count`` readings; ``ValueError`` with a one-line reason when anything is wrong."""
    if not 0 <= count <= MAX_READINGS:
        raise ValueError(f"{count} readings, at most {MAX_READINGS} a batch")
    try:
        body = _DECODER.decode(_inflate(data))
    except msgspec.DecodeError as exc:   # ValidationError is a DecodeError
        raise ValueError(f"body does not follow the schema: {exc}") from None
    _lengths(body, count)
    info = check_info(body.info)
    points = tuple([_check_point(code) for code in body.points])
    qualities = tuple([_check_quality(word) for word in body.qualities])
    if len(set(points)) != len(points) or len(set(qualities)) != len(qualities):
        raise ValueError("a table lists the same entry twice")
    n_points, n_qualities, n_periods = len(points), len(qualities), len(_PERIODS)
    base = check_ts("base", body.base)
    point_ix, period_ix, quality_ix, kinds = body.point_ix, body.period_ix, body.quality_ix, \
        body.kinds
    # Column by column (one pass each, mostly in C) rather than reading by reading: the
    # collector decodes every reading it receives (bench/bench_ingest.py). A column that
    # fails a check is walked again to name the first reading at fault.
    if count and (min(point_ix) < 0 or max(point_ix) >= n_points
                  or max(period_ix) >= n_periods
                  or min(quality_ix) < 0 or max(quality_ix) >= n_qualities):
        columns = zip(point_ix, period_ix, quality_ix, strict=True)
        bad = next(i for i, (pi, per, qi) in enumerate(columns)
                   if not (0 <= pi < n_points and per < n_periods and 0 <= qi < n_qualities))
        raise ValueError(f"reading {bad}: an index points outside its table")
    times = list(accumulate(body.dts, initial=base))
    del times[0]
    if count and (min(times) < TS_MIN or max(times) > TS_MAX):
        bad = next(i for i, ts in enumerate(times) if not TS_MIN <= ts <= TS_MAX)
        check_ts(f"reading {bad}: ts", times[bad])
    values = _values(kinds, point_ix, period_ix, body)
    if not all(map(math.isfinite, values)):
        bad = next(i for i, value in enumerate(values) if not math.isfinite(value))
        raise ValueError(f"reading {bad}: value is not finite")
    return ReadingColumns(points=points, qualities=qualities, point_ix=point_ix,
                          period_ix=period_ix, quality_ix=quality_ix, ts=times,
                          values=values), info


def decode_body(data: bytes, count: int) -> tuple[tuple[Reading, ...], dict[str, Any] | None]:
    """The readings and info in a compressed body that the header says holds ``count``
    readings; ``ValueError`` with a one-line reason when anything is wrong."""
    columns, info = decode_columns(data, count)
    return columns.readings(), info
