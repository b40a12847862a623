"""The synthetic transaction generator: determinism, partitioning, realism and wire format."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from bytewax_fraud.connectors.generator import (
    CHUNK_SECONDS,
    CURRENCIES,
    PATTERNS,
    START_TIMESTAMP,
    TransactionGenerator,
    user_id,
)
from bytewax_fraud.partitioning import murmur2, murmur2_many, partition_for
from bytewax_fraud.records import Transaction


def _equal(a: object, b: object) -> None:
    for name in ("user_index", "amount", "timestamp", "merchant_index", "label", "pattern"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("length", range(13))
def test_murmur2_many_equals_murmur2(length: int) -> None:
    rng = np.random.default_rng(length)
    data = rng.integers(0, 256, (300, length), dtype=np.uint8)
    got = murmur2_many(data)
    assert got.dtype == np.int32
    assert got.tolist() == [murmur2(bytes(row)) for row in data]


def test_user_id_format() -> None:
    assert user_id(42) == "u0000042"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"users": 0},
        {"users": 10, "seed": -1},
        {"users": 10, "partition_count": 0},
        {"users": 10, "partition_count": 2, "partition_index": 2},
    ],
)
def test_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        TransactionGenerator(**kwargs)


def test_partition_users_match_partition_for_and_cover_all_once() -> None:
    users, parts = 3000, 4
    seen = []
    for p in range(parts):
        idx = TransactionGenerator(users, partition_count=parts, partition_index=p).user_indices
        assert all(partition_for(user_id(int(i)), parts) == p for i in idx)
        seen.append(idx)
    union = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(union, np.arange(users))


def test_deterministic_and_seed_dependent() -> None:
    a = TransactionGenerator(2000, seed=3, partition_count=2, partition_index=1).chunk(2)
    b = TransactionGenerator(2000, seed=3, partition_count=2, partition_index=1).chunk(2)
    c = TransactionGenerator(2000, seed=4, partition_count=2, partition_index=1).chunk(2)
    _equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a.amount, c.amount)


def test_chunks_are_time_ordered_and_inside_their_window() -> None:
    gen = TransactionGenerator(2000, seed=1)
    prev_max = -np.inf
    for k, chunk in enumerate(itertools.islice(gen.chunks(), 4)):
        ts = chunk.timestamp
        assert np.all(np.diff(ts) >= 0)
        assert ts.min() > prev_max
        assert ts.min() >= START_TIMESTAMP + k * CHUNK_SECONDS
        assert ts.max() < START_TIMESTAMP + (k + 1) * CHUNK_SECONDS
        prev_max = ts.max()


def test_columns_is_prefix_of_chunks() -> None:
    gen = TransactionGenerator(1000, seed=5)
    first = gen.chunk(0)
    cols = gen.columns(len(first) + 10)
    assert len(cols) == len(first) + 10
    np.testing.assert_array_equal(cols.amount[: len(first)], first.amount)


def test_realism() -> None:
    cols = TransactionGenerator(20_000, seed=1).columns(300_000)
    assert 0.005 <= cols.label.mean() <= 0.02
    assert np.all(cols.amount > 0)
    np.testing.assert_array_equal(np.round(cols.amount, 2), cols.amount)
    assert set(np.unique(cols.pattern).tolist()) == set(range(len(PATTERNS)))
    np.testing.assert_array_equal(cols.label == 1, np.isin(cols.pattern, [1, 2, 3]))
    assert cols.currency.max() < len(CURRENCIES)
    # Card testing is mostly tiny amounts; account takeovers are large.
    assert np.median(cols.amount[cols.pattern == 1]) < 2.0
    assert np.median(cols.amount[cols.pattern == 2]) > 5 * np.median(cols.amount)


def test_events_parse_and_match_columns() -> None:
    gen = TransactionGenerator(500, seed=7, partition_count=3, partition_index=2)
    events = list(itertools.islice(gen.events(), 200))
    cols = gen.columns(200)
    for k, raw in enumerate(events):
        tx = Transaction.model_validate_json(raw)
        assert tx.transaction_id == f"tx-7-3-2-{k}"
        assert tx.user_id == user_id(int(cols.user_index[k]))
        assert tx.amount == cols.amount[k]
        assert tx.timestamp == cols.timestamp[k]
        assert tx.merchant == f"m{cols.merchant_index[k]:06d}"
        assert tx.currency == CURRENCIES[cols.currency[k]]
        assert tx.label == cols.label[k]
        assert json.loads(raw)["pattern"] == PATTERNS[cols.pattern[k]]
        assert partition_for(tx.user_id, 3) == 2


def test_events_start_is_consistent() -> None:
    gen = TransactionGenerator(800, seed=2)
    n0 = len(gen.chunk(0))
    all_events = list(itertools.islice(gen.events(), n0 + 300))
    for start in (0, 1, n0 - 5, n0, n0 + 17):
        got = list(itertools.islice(gen.events(start), 50))
        assert got == all_events[start : start + 50]


def test_empty_partition_has_no_events() -> None:
    parts = 8
    busy = {partition_for(user_id(0), parts)}
    empty = next(p for p in range(parts) if p not in busy)
    gen = TransactionGenerator(1, partition_count=parts, partition_index=empty)
    assert gen.user_indices.shape == (0,)
    assert list(gen.events()) == []
    assert len(gen.chunk(0)) == 0
    with pytest.raises(ValueError, match="no users"):
        gen.columns(5)
