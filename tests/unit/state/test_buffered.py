"""The write-back buffer reads like the store it fronts, and the store only ever
holds the state as of some batch boundary (what recovery relies on)."""

from __future__ import annotations

import random
from pathlib import Path

from bytewax_fraud.state.buffered import BufferedStore
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.state.rocksdb import RocksStore


def _snapshot(store: RocksStore) -> dict[bytes, bytes]:
    return dict(store.scan(b"", b"\xff", 1_000_000))


def test_random_operations_read_like_a_plain_store_and_flush_whole_batches(
    tmp_path: Path,
) -> None:
    rocks = RocksStore(tmp_path / "db")
    buffered = BufferedStore(rocks, max_bytes=2_000)
    reference = MemoryStore()
    rng = random.Random(1)
    keys = [b"u%03d" % i for i in range(60)]
    boundaries = [dict[bytes, bytes]()]  # reference states after each batch
    flushes = 0
    for step in range(600):
        op = rng.random()
        if op < 0.6:
            ks = rng.sample(keys, rng.randint(1, 8))
            vs = [rng.randbytes(rng.randint(1, 90)) for _ in ks]
            dels = rng.sample(keys, rng.randint(0, 2))
            dels = [k for k in dels if k not in ks]
            buffered.write(ks, vs, dels)
            reference.write(ks, vs, dels)
        elif op < 0.75:
            lo, hi = sorted(rng.sample(keys, 2))
            buffered.delete_range(lo, hi)
            reference.delete_range(lo, hi)
        elif op < 0.8:
            buffered.sync()
        else:
            ks = rng.sample(keys, 10)
            assert buffered.get_many(ks) == reference.get_many(ks), step
            start = rng.choice(keys)
            assert buffered.scan(start, b"v", 7) == reference.scan(start, b"v", 7), step
        state = dict(reference.scan(b"", b"\xff", 1_000))
        boundaries.append(state)
        on_disk = _snapshot(rocks)
        if on_disk == state:
            flushes += 1
        # Whatever RocksDB holds is the state after some whole batch, never a part of one.
        assert on_disk in boundaries, step
    assert flushes > 50  # the buffer did flush, by size and by sync/scan/delete_range
    buffered.sync()
    assert _snapshot(rocks) == dict(reference.scan(b"", b"\xff", 1_000))
    buffered.close()


def test_writes_stay_in_memory_until_the_buffer_fills(tmp_path: Path) -> None:
    rocks = RocksStore(tmp_path / "db")
    buffered = BufferedStore(rocks, max_bytes=100)
    buffered.write([b"a"], [b"x" * 60])
    assert rocks.get_many([b"a"]) == [None]
    assert buffered.get_many([b"a", b"b"]) == [b"x" * 60, None]
    buffered.write([b"b"], [b"y" * 60], deletes=[b"a"])  # 120 bytes: flushed
    assert rocks.get_many([b"a", b"b"]) == [None, b"y" * 60]
    buffered.write([b"b"], [b"z"], deletes=[])
    buffered.write([], [], deletes=[b"b"])
    assert buffered.get_many([b"b"]) == [None]  # deleted in the buffer, still in RocksDB
    assert rocks.get_many([b"b"]) == [b"y" * 60]
    buffered.close()  # closing flushes
    reopened = RocksStore(tmp_path / "db")
    assert reopened.get_many([b"a", b"b"]) == [None, None]
    reopened.close()
