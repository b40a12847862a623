"""The outbox: one value per batch, read back by offset, byte for byte, on both stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bytewax_fraud.errors import OutboxEntryError, StateError
from bytewax_fraud.state.base import StateStore, outbox_key
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.state.outbox import (
    MAGIC,
    decode_entry,
    decode_rejection,
    encode_entry,
    encode_rejection,
    read_lines,
)
from bytewax_fraud.state.rocksdb import RocksStore


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    return MemoryStore() if request.param == "memory" else RocksStore(tmp_path / "db")


def lines_for(offsets: list[int]) -> list[bytes]:
    # Different lengths, non-ASCII and an empty line: the ends must be exact.
    return [f'{{"offset":{o},"x":"{"é" * (o % 5)}"}}'.encode() if o % 7 else b"" for o in offsets]


def put(store: StateStore, offsets: list[int]) -> None:
    key, value = encode_entry(np.asarray(offsets, np.int64), lines_for(offsets))
    store.write([key], [value])


def test_an_entry_round_trips_byte_for_byte_and_is_keyed_by_its_largest_offset() -> None:
    offsets = [3, 4, 9, 10, 200]
    key, value = encode_entry(np.asarray(offsets, np.int64), lines_for(offsets))
    assert key == outbox_key(200) and value.startswith(MAGIC)
    assert decode_entry(key, value) == dict(zip(offsets, lines_for(offsets), strict=True))


def test_lines_are_found_across_batches_and_interleaved_entries(store: StateStore) -> None:
    put(store, list(range(0, 100)))
    put(store, list(range(100, 200)))
    # A batch split between two models: two entries with interleaved offsets.
    put(store, list(range(200, 300, 2)))
    put(store, list(range(201, 301, 2)))
    want = [5, 99, 100, 150, 201, 202, 298, 299]
    expected = {o: lines_for([o])[0] for o in want}
    assert read_lines(store, want) == expected
    assert read_lines(store, [301, 5]) == {5: lines_for([5])[0]}  # 301 was never written
    assert read_lines(store, []) == {}


def test_a_value_without_the_magic_prefix_is_refused_never_read_as_a_line(
    store: StateStore,
) -> None:
    put(store, [5, 6])
    store.write([outbox_key(7), outbox_key(8)], [b'{"old":7}', b"\xff\x00garbage"])
    put(store, [9, 10])
    assert read_lines(store, [5, 6]) == dict(zip([5, 6], lines_for([5, 6]), strict=True))
    with pytest.raises(OutboxEntryError, match="offset 7 .*delete it"):
        read_lines(store, [7])
    with pytest.raises(OutboxEntryError, match="offset 8"):
        read_lines(store, [8, 10])


def test_pruning_below_an_offset_keeps_every_entry_that_holds_a_later_one(
    store: StateStore,
) -> None:
    put(store, list(range(0, 100)))
    put(store, list(range(100, 200)))
    store.delete_range(outbox_key(0), outbox_key(150))
    assert set(read_lines(store, [50, 120, 199])) == {120, 199}


def test_a_damaged_entry_is_a_state_error() -> None:
    key, value = encode_entry(np.asarray([1, 2], np.int64), [b"a", b"bb"])
    with pytest.raises(StateError, match="damaged"):
        decode_entry(key, value[:-1])
    with pytest.raises(StateError, match="damaged"):
        decode_entry(key, value[:12])


def test_rejections_share_the_outbox_without_being_taken_for_lines(store: StateStore) -> None:
    """A rejected event's entry sits among the batch entries: a replay finds it as a
    rejection, never as a prediction, and a batch entry is never read as a rejection."""
    put(store, [10, 11, 13])
    store.write([outbox_key(12)], [encode_rejection("TimestampTooLate", "timestamp … behind")])
    put(store, [14, 15])
    (rejection, batch_entry) = store.get_many([outbox_key(12), outbox_key(13)])
    assert decode_rejection(rejection) == ("TimestampTooLate", "timestamp … behind")
    assert batch_entry is not None and decode_rejection(batch_entry) is None
    assert decode_rejection(b'{"transaction_id":"t"}') is None
    assert decode_rejection(None) is None
    found = read_lines(store, [11, 14, 15])
    assert found == dict(zip([11, 14, 15], lines_for([11]) + lines_for([14, 15]), strict=True))
    assert 12 not in read_lines(store, [12, 13])
