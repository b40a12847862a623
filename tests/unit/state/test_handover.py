"""Hand-over: a state's positions in its input are cleared, its users and clock kept."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bytewax_fraud.errors import StateError
from bytewax_fraud.state.base import HIGH_WATER_KEY, REPLAY_FLOOR_KEY, outbox_key, user_key
from bytewax_fraud.state.codec import NO_OFFSET, UserStates, decode, encode
from bytewax_fraud.state.handover import hand_over, without_fence, without_positions
from bytewax_fraud.state.manifest import ensure_manifest, partition_dir
from bytewax_fraud.state.rocksdb import RocksStore


def _records(n: int, offset: int) -> list[bytes]:
    st = UserStates.empty(n, 10, 4)
    st.count[:] = 3
    st.last_ts[:] = 1.7e9
    st.last_offset[:] = offset
    st.amounts[:, :3] = 12.5
    st.hidden[:] = 0.25
    return encode(st, 77)


def test_without_fence_clears_only_the_offset() -> None:
    (rec,) = _records(1, 1_000_000_000_017)
    before, after = decode([rec], 10, 4, 77), decode([without_fence(rec)], 10, 4, 77)
    assert after.last_offset.tolist() == [NO_OFFSET]
    for name in ("count", "last_ts", "amounts", "merchants", "hidden"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))


def test_without_positions_keeps_the_stack() -> None:
    log = {"version": 1, "applied_seq": 7, "stack": [{"m": 1}], "switches": [{"seq": 7}]}
    got = json.loads(without_positions(json.dumps(log).encode()))
    assert got == {"version": 1, "applied_seq": -1, "stack": [{"m": 1}], "switches": []}


def test_hand_over_clears_fences_outbox_and_marks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ensure_manifest(state, 2, 10)
    store = RocksStore(partition_dir(state, 1))
    keys = [user_key(f"u{i}") for i in range(5)]
    store.write(
        [*keys, outbox_key(3), HIGH_WATER_KEY, REPLAY_FLOOR_KEY],
        [*_records(5, 40), b"box", (41).to_bytes(8, "big"), (2).to_bytes(8, "big")],
    )
    store.close()
    done = hand_over(state, tmp_path / "recovery", "kafka")
    assert (done.partitions, done.users, done.outbox_entries) == (2, 5, 1)
    store = RocksStore(partition_dir(state, 1))
    try:
        values = store.get_many([*keys, outbox_key(3), HIGH_WATER_KEY, REPLAY_FLOOR_KEY])
    finally:
        store.close()
    assert values[5:] == [None, None, None]
    recs = decode(values[:5], 10, 4, 77)  # type: ignore[arg-type]
    assert recs.last_offset.tolist() == [NO_OFFSET] * 5 and recs.count.tolist() == [3] * 5
    assert json.loads((state / "input-kind.json").read_text()) == {"kind": "kafka"}
    assert list((tmp_path / "recovery").glob("part-*.sqlite3"))


def test_hand_over_needs_a_new_recovery_directory(tmp_path: Path) -> None:
    ensure_manifest(tmp_path / "state", 1, 10)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "part-0.sqlite3").write_bytes(b"")
    with pytest.raises(StateError, match="needs a new recovery directory"):
        hand_over(tmp_path / "state", tmp_path / "old", "kafka")
    with pytest.raises(StateError, match="no state"):
        hand_over(tmp_path / "none", tmp_path / "new", "kafka")
