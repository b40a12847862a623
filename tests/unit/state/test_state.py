"""The state codec, the two stores and the manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bytewax_fraud.errors import StateError
from bytewax_fraud.inference.runtime import model_tag
from bytewax_fraud.state.base import StateStore, outbox_key, user_key
from bytewax_fraud.state.codec import UserStates, decode, decode_one, encode
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.state.rocksdb import RocksStore

TAG = model_tag("ab" * 32)


def random_states(n: int, window: int, hidden: int, seed: int = 0) -> UserStates:
    rng = np.random.default_rng(seed)
    st = UserStates.empty(n, window, hidden)
    st.count[:] = rng.integers(0, window + 1, n)
    st.last_ts[:] = rng.uniform(1.7e9, 1.8e9, n)
    st.last_offset[:] = rng.integers(0, 1 << 40, n)
    st.amounts[:] = rng.uniform(0, 1000, (n, window)).astype(np.float32)
    st.merchants[:] = rng.integers(0, 1 << 32, (n, window), dtype=np.uint64).astype(np.uint32)
    st.hidden[:] = rng.normal(size=(n, hidden)).astype(np.float32)
    return st


@pytest.mark.parametrize(("window", "hidden"), [(10, 128), (3, 0), (255, 7)])
def test_codec_round_trips_bit_for_bit(window: int, hidden: int) -> None:
    st = random_states(50, window, hidden)
    values = encode(st, TAG)
    assert len({len(v) for v in values}) == 1
    back = decode(list(values), window, hidden, TAG)
    for name in ("count", "last_ts", "last_offset", "amounts", "merchants", "hidden"):
        np.testing.assert_array_equal(getattr(back, name), getattr(st, name), err_msg=name)
    assert (back.model_tag == TAG).all()


def test_absent_records_decode_as_fresh_users() -> None:
    st = random_states(2, 10, 4)
    values: list[bytes | None] = [None, *encode(st, TAG)[:1], None]
    back = decode(values, 10, 4, TAG)
    assert back.count.tolist() == [0, int(st.count[0]), 0]
    assert back.last_offset[0] == -1 and back.last_offset[2] == -1
    np.testing.assert_array_equal(back.hidden[0], 0)


def test_hidden_state_of_another_model_is_reset_but_history_kept() -> None:
    st = random_states(3, 10, 128)
    values = encode(st, model_tag("cd" * 32))
    back = decode(list(values), 10, 128, TAG)
    np.testing.assert_array_equal(back.hidden, 0)
    np.testing.assert_array_equal(back.amounts, st.amounts)
    np.testing.assert_array_equal(back.last_offset, st.last_offset)
    # A record with another hidden size (a model of a different shape) decodes too.
    other = encode(random_states(1, 10, 64), TAG)
    back = decode([*values[:1], other[0]], 10, 128, TAG)
    np.testing.assert_array_equal(back.hidden[1], 0)
    assert back.count[1] == random_states(1, 10, 64).count[0]


def test_damaged_and_foreign_records_are_named_errors() -> None:
    good = encode(random_states(1, 10, 8), TAG)[0]
    with pytest.raises(StateError, match="damaged"):
        decode([good[:20]], 10, 8, TAG)
    with pytest.raises(StateError, match="damaged"):
        decode([good + b"xx"], 10, 8, TAG)
    with pytest.raises(StateError, match="codec version 9"):
        decode([b"\x09" + good[1:]], 10, 8, TAG)
    with pytest.raises(StateError, match="FRAUD_WINDOW=12"):
        decode([good], 12, 8, TAG)


def test_decode_one_shows_the_window_oldest_first() -> None:
    st = UserStates.empty(1, 4, 0)
    st.count[0] = 2
    st.amounts[0] = [0, 0, 1.5, 2.5]
    rec = decode_one(encode(st, TAG)[0])
    assert rec["amounts"] == [1.5, 2.5]
    assert rec["count"] == 2 and rec["hidden_size"] == 0


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StateStore:
    if request.param == "memory":
        return MemoryStore()
    s = RocksStore(tmp_path / "db")
    request.addfinalizer(s.close)
    return s


def test_store_contract(store: StateStore) -> None:
    store.write([user_key("a"), user_key("b")], [b"1", b"2"])
    assert store.get_many([user_key("b"), user_key("x"), user_key("a")]) == [b"2", None, b"1"]
    store.write([outbox_key(o) for o in (5, 300, 70000)], [b"o5", b"o300", b"o70000"])
    assert [v for _, v in store.scan(outbox_key(0), b"p", 10)] == [b"o5", b"o300", b"o70000"]
    store.delete_range(outbox_key(0), outbox_key(300))
    assert [v for _, v in store.scan(b"o", b"p", 10)] == [b"o300", b"o70000"]
    store.write([user_key("c")], [b"3"], deletes=[user_key("a")])
    assert [k for k, _ in store.scan(b"u", b"v", 10)] == [user_key("b"), user_key("c")]
    assert store.scan(b"u", b"v", 1) == [(user_key("b"), b"2")]
    store.sync()


def test_rocksdb_store_persists_across_reopen(tmp_path: Path) -> None:
    s = RocksStore(tmp_path / "db")
    s.write([b"ukey"], [b"\x00\xffvalue"])
    s.sync()
    s.close()
    s = RocksStore(tmp_path / "db")
    assert s.get_many([b"ukey"]) == [b"\x00\xffvalue"]
    s.close()


def test_manifest_records_and_checks_the_partition_count(tmp_path: Path) -> None:
    ensure_manifest(tmp_path / "state", 4, 10)
    ensure_manifest(tmp_path / "state", 4, 10)
    with pytest.raises(StateError, match="FRAUD_PARTITIONS=4"):
        ensure_manifest(tmp_path / "state", 8, 10)
    with pytest.raises(StateError, match="FRAUD_WINDOW=10"):
        ensure_manifest(tmp_path / "state", 4, 12)


def test_partition_stores_without_manifest_are_refused(tmp_path: Path) -> None:
    (tmp_path / "partition-0000").mkdir()
    with pytest.raises(StateError, match="incomplete"):
        ensure_manifest(tmp_path, 4, 10)
