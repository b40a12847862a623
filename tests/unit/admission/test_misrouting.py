"""The vectorised partition check: exactly `partition_for`, on any ids."""

from __future__ import annotations

import base64
import random
import time

import numpy as np
import pytest

from bytewax_fraud.admission.misrouting import partitions_of, reject_misrouted
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.records import EventBatch


def _ids(rng: random.Random, n: int, alphabet: str) -> list[str]:
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 130))) for _ in range(n)]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 16, 840])
def test_partitions_of_equals_partition_for(count: int) -> None:
    rng = random.Random(count)
    fixed = [f"u{i:07d}" for i in range(2000)]
    ascii_ids = _ids(rng, 2000, "abcdefghijklmnopqrstuvwxyz0123456789-_@.")
    unicode_ids = _ids(rng, 2000, "aé☕ü𝄞z9")
    for ids in (fixed, ascii_ids, unicode_ids, ["x"], []):
        assert partitions_of(ids, count).tolist() == [partition_for(u, count) for u in ids]


def _batch(user_ids: list[str], partition: int) -> EventBatch:
    n = len(user_ids)
    rows = [
        {
            "transaction_id": f"t{i}",
            "user_id": u,
            "amount": 1.0,
            "timestamp": 1.7e9,
            "merchant": "m",
            "label": None,
        }
        for i, u in enumerate(user_ids)
    ]
    values: list[bytes | None] = [f"raw-{i}".encode() for i in range(n)]
    keys: list[bytes | None] = [f"key-{i}".encode() for i in range(n)]
    offsets = np.arange(100, 100 + n, dtype=np.int64)
    stamps = np.full(n, 1.7e9)
    return EventBatch.from_rows(
        partition, offsets, np.zeros(n, np.int64), rows, "topic", values, keys, stamps
    )


def test_reject_misrouted_keeps_the_partitions_own_users_and_letters_the_rest() -> None:
    users = [f"u{i:07d}" for i in range(200)]
    batch = _batch(users, 2)
    kept, dead = reject_misrouted(batch, 4)
    assert kept is not None
    assert kept.user_ids == [u for u in users if partition_for(u, 4) == 2]
    assert kept.values == [batch.values[i] for i in range(200) if partition_for(users[i], 4) == 2]  # type: ignore[index]
    assert len(dead) == 200 - len(kept)
    for d in dead:
        i = d.origin.offset - 100
        assert (d.stage, d.error_class) == ("routing", "WrongPartition")
        assert f"belongs to partition {partition_for(users[i], 4)}" in d.reason
        assert "arrived on partition 2" in d.reason and "murmur2_random" in d.reason
        assert (d.origin.source, d.origin.partition, d.origin.timestamp) == ("topic", 2, 1.7e9)
        assert d.key == f"key-{i}"
        assert base64.b64decode(d.value_b64) == f"raw-{i}".encode()
    alone = _batch(["u0000001"], partition_for("u0000001", 4))
    assert reject_misrouted(alone, 4) == (alone, [])


def test_the_check_costs_well_under_a_microsecond_per_event() -> None:
    users = [f"u{i:07d}" for i in range(1024)]
    best = min(_timed(lambda: partitions_of(users, 4)) for _ in range(20))
    # The whole pipeline spends ~20 µs per event; this must stay a small part of it.
    assert best / 1024 < 1e-6, f"{best / 1024 * 1e9:.0f} ns per event"


def _timed(f: object) -> float:
    t = time.perf_counter()
    f()  # type: ignore[operator]
    return time.perf_counter() - t


def test_small_batches_get_the_same_verdicts_from_the_table_of_known_homes(monkeypatch) -> None:
    from bytewax_fraud.admission import misrouting

    monkeypatch.setattr(misrouting, "_HOMES", {})
    monkeypatch.setattr(misrouting, "_HOMES_MAX", 50)  # emptied several times below
    rng = random.Random(5)
    users = [f"u{i:07d}" for i in range(120)] + _ids(rng, 40, "aé☕z9")
    for _ in range(300):
        ids = [rng.choice(users) for _ in range(rng.randrange(1, misrouting.SMALL_BATCH + 1))]
        part = rng.randrange(3)
        kept, dead = reject_misrouted(_batch(ids, part), 3)
        home = [partition_for(u, 3) for u in ids]
        assert (kept.user_ids if kept else []) == [
            u for u, h in zip(ids, home, strict=True) if h == part
        ]
        assert [d.origin.offset - 100 for d in dead] == [i for i, h in enumerate(home) if h != part]
        assert len(misrouting._HOMES[3]) <= max(50, len(set(ids)))
