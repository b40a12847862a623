"""The record cache: reads what it knows from memory, the rest from the store, within a bound."""

from __future__ import annotations

from collections.abc import Sequence

from bytewax_fraud.state.cache import RecordCache
from bytewax_fraud.state.memory import MemoryStore


class CountingStore(MemoryStore):
    """A memory store that counts the keys asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[bytes] = []

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        self.asked += keys
        return super().get_many(keys)


def test_written_records_are_read_from_memory_and_the_rest_from_the_store() -> None:
    store = CountingStore()
    store.write([b"ua", b"ub"], [b"A" * 10, b"B" * 10])
    cache = RecordCache(1 << 20)
    cache.put([b"ua"], [b"A" * 10])
    assert cache.get_many([b"ua", b"ub", b"uc"], store) == [b"A" * 10, b"B" * 10, None]
    assert store.asked == [b"ub", b"uc"]
    # What the store gave is remembered; an absent key is asked again.
    assert cache.get_many([b"ub", b"uc"], store) == [b"B" * 10, None]
    assert store.asked == [b"ub", b"uc", b"uc"]
    assert (cache.hits, cache.misses) == (2, 3)


def test_past_its_bound_the_cache_empties_and_the_store_answers() -> None:
    store = CountingStore()
    keys = [b"u%d" % i for i in range(10)]
    store.write(keys, [b"x" * 100] * 10)
    cache = RecordCache(3 * (100 + 120))  # room for three records
    cache.put(keys[:3], [b"x" * 100] * 3)
    assert len(cache) == 3
    cache.put(keys[3:4], [b"x" * 100])
    assert len(cache) == 0
    assert cache.get_many(keys[:2], store) == [b"x" * 100] * 2
    assert store.asked == keys[:2]


def test_dropped_keys_are_read_from_the_store_again() -> None:
    store = CountingStore()
    cache = RecordCache(1 << 20)
    cache.put([b"ua"], [b"A"])
    cache.drop([b"ua", b"unknown"])
    assert cache.get_many([b"ua"], store) == [None]
    assert store.asked == [b"ua"]


def test_a_zero_bound_turns_it_off() -> None:
    store = CountingStore()
    cache = RecordCache(0)
    cache.put([b"ua"], [b"A"])
    assert cache.get_many([b"ua"], store) == [None] and len(cache) == 0
