"""protocol.unseal_columns / ReadingColumns: the collector's column path gives exactly what
unseal gives, and refuses exactly what unseal refuses."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from bench.bench_encoding import make_batch_readings
from protocol import (
    BatchFormatError,
    BatchSignatureError,
    ColumnBatch,
    ReadingColumns,
    seal,
    unseal,
    unseal_columns,
)

from .test_batch import EC_KEY, ED_KEY, body, envelope, make, packed, same, series


def bits(values: list[float]) -> list[bytes]:
    return [struct.pack(">d", v) for v in values]


@pytest.mark.parametrize("key", [EC_KEY, ED_KEY], ids=["ecdsa-p256", "ed25519"])
def test_columns_give_the_readings_unseal_gives(key: Any) -> None:
    readings = tuple(make_batch_readings()) + tuple(series())
    sealed = seal(make(readings, info={"why": "test"}), key)
    plain = unseal(sealed, key.public_key())
    cols = unseal_columns(sealed, key.public_key())
    assert isinstance(cols, ColumnBatch) and cols.count == len(readings)
    assert same(cols.readings, plain.readings) and same(cols.readings, readings)
    assert cols.to_batch() == plain
    c = cols.columns
    assert bits(c.values) == bits([r.value for r in readings])
    assert c.ts == [r.ts for r in readings]
    assert [c.points[i] for i in c.point_ix] == [r.point for r in readings]
    assert [ReadingColumns.PERIODS[i] for i in c.period_ix] == [r.period for r in readings]
    assert [c.qualities[i] for i in c.quality_ix] == [r.quality for r in readings]


def test_columns_of_readings_round_trip() -> None:
    readings = tuple(make_batch_readings()) + tuple(series())
    cols = ReadingColumns.of(readings)
    assert len(cols) == len(readings) and same(cols.readings(), readings)
    assert len(cols.points) == len({r.point for r in readings})


def test_columns_refuse_what_unseal_refuses() -> None:
    sealed = seal(make(series()), ED_KEY)
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    for decode in (unseal, unseal_columns):
        with pytest.raises(BatchSignatureError):
            decode(sealed, other)
    bad = envelope(packed(body(point_ix=(1,))), 1)
    reasons = []
    for decode in (unseal, unseal_columns):
        with pytest.raises(BatchFormatError) as caught:
            decode(bad, ED_KEY.public_key())
        reasons.append(str(caught.value))
    assert reasons[0] == reasons[1] and "outside its table" in reasons[0]
