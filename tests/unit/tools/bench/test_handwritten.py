"""The hand-written baseline's batching and input: what makes its figures comparable."""

from __future__ import annotations

import itertools

import orjson

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.tools.bench.handwritten import _next_batch, pregenerate


def _values(users: list[str]) -> list[bytes]:
    return [orjson.dumps({"user_id": u, "i": i}) for i, u in enumerate(users)]


def test_batches_hold_a_user_once_and_keep_each_users_order() -> None:
    users = ["a", "b", "a", "c", "a", "b", "d", "e", "c", "f"]
    values = _values(users)
    carry: list = []
    pos, seen = 0, []
    while pos < len(values) or carry:
        batch, carry, pos = _next_batch(carry, values, pos, 3, orjson.loads)
        assert 0 < len(batch) <= 3
        names = [tx["user_id"] for _, tx in batch]
        assert len(set(names)) == len(names)  # a user at most once per batch
        seen += [i for i, _ in batch]
    assert sorted(seen) == list(range(len(users)))  # every event, once
    for u in set(users):  # each user's events in input order
        mine = [i for i in seen if users[i] == u]
        assert mine == sorted(mine)


def test_input_is_the_generator_partitions_bytes_in_each_partitions_order() -> None:
    got = pregenerate(users=200, seed=3, partitions=2, events=3000)
    assert len(got) == 3000
    streams = [
        list(
            itertools.islice(
                TransactionGenerator(
                    users=200, seed=3, partition_count=2, partition_index=p
                ).events(),
                1500,
            )
        )
        for p in range(2)
    ]
    assert sorted(got) == sorted(streams[0] + streams[1])
    where = {v: i for i, v in enumerate(got)}
    for s in streams:
        assert [where[v] for v in s] == sorted(where[v] for v in s)
