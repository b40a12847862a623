"""The partition scorer: waves, state, TTL, replay fencing, stateless models."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bytewax_fraud.admission.event_time import TimePolicy
from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.features import compute_features, merchant_code
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.parse import parse_message
from bytewax_fraud.records import Event, RawMessage, Transaction
from bytewax_fraud.scoring import PartitionScorer
from bytewax_fraud.state.base import HIGH_WATER_KEY, REPLAY_FLOOR_KEY, user_key
from bytewax_fraud.state.codec import decode, decode_one
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.state.rocksdb import RocksStore

MODELS = Path(__file__).resolve().parents[2] / "models"
T0 = 1_767_225_600.0
DAY = 86400.0


@pytest.fixture(scope="module")
def gru() -> LoadedModel:
    return ModelLoader().load(MODELS / "fraud_gru.onnx")


@pytest.fixture(scope="module")
def stateless() -> LoadedModel:
    return ModelLoader().load(MODELS / "fraud_stateless.onnx")


def event(user: str, amount: float, ts: float, merchant: str, offset: int) -> Event:
    tx = Transaction(
        transaction_id=f"t{offset}",
        user_id=user,
        amount=amount,
        currency="USD",
        timestamp=ts,
        merchant=merchant,
    )
    return Event(tx, 0, offset, 0)


def generated_events(n: int, users: int = 300) -> list[Event]:
    gen = TransactionGenerator(users=users, seed=7)
    out = []
    for i, value in zip(range(n), gen.events(), strict=False):
        ev = parse_message(RawMessage(value, None, "generator", 0, i, None, 0))
        assert isinstance(ev, Event)
        out.append(ev)
    return out


def strip_latency(lines: list[bytes]) -> list[dict[str, object]]:
    out = []
    for line in lines:
        d = json.loads(line)
        d.pop("latency_ms")
        out.append(d)
    return out


def test_hand_computed_sequence(gru: LoadedModel) -> None:
    """Window, features and hidden state equal a step-by-step computation with the model."""
    steps = [
        (12.0, 0.0, "m1"),
        (15.5, 3600.0, "m1"),
        (0.99, 3700.0, "m9"),
        (1.05, 3710.0, "m9"),
        (480.0, 3720.5, "m7"),
    ]
    events = [event("alice", a, T0 + dt, m, i) for i, (a, dt, m) in enumerate(steps)]
    store = MemoryStore()
    scored = PartitionScorer(0, store, gru, window=4, ttl_seconds=30 * DAY).score(events)

    session = ort.InferenceSession(str(MODELS / "fraud_gru.onnx"))
    hidden = np.zeros((1, gru.hidden_size), np.float32)
    window: list[float] = []
    merchants: list[str] = []
    last_ts = 0.0
    for i, (amount, dt, merchant) in enumerate(steps):
        # Features by hand, in plain Python.
        ts = T0 + dt
        w = [float(np.float32(a)) for a in window]
        logs = [math.log1p(a) for a in w]
        mean = sum(w) / len(w) if w else 0.0
        mu = sum(logs) / len(logs) if logs else 0.0
        sd = math.sqrt(sum((x - mu) ** 2 for x in logs) / len(logs)) if logs else 0.0
        expected = [
            math.log1p(amount),
            math.log1p(mean) if w else 0.0,
            math.log1p(amount) - math.log1p(mean) if w else 0.0,
            max(-10, min(10, (math.log1p(amount) - mu) / (sd + 0.25))) if len(w) >= 2 else 0.0,
            math.log1p(ts - last_ts) / 15 if w else 1.0,
            len(w) / 4,
            1.0 if merchant in merchants else 0.0,
            sum(a < 2.0 for a in w) / len(w) if w else 0.0,
        ]
        padded = np.zeros((1, 4), np.float32)
        padded[0, 4 - len(w) :] = w
        codes = np.zeros((1, 4), np.uint32)
        codes[0, 4 - len(merchants) :] = [merchant_code(m) for m in merchants]
        feats = compute_features(
            padded, codes, [len(w)], np.array([last_ts]), [amount], [ts], [merchant_code(merchant)]
        )
        np.testing.assert_allclose(feats[0], expected, rtol=1e-6, atol=1e-6)
        prob, hidden = session.run(None, {"input_features": feats, "input_hidden_state": hidden})
        line = json.loads(scored.lines[i])
        assert line["probability"] == float(prob[0, 0])
        assert line["transaction_id"] == f"t{i}" and line["offset"] == i
        window = (window + [amount])[-4:]
        merchants = (merchants + [merchant])[-4:]
        last_ts = ts

    rec = decode_one(store.get_many([user_key("alice")])[0] or b"")
    assert rec["amounts"] == [float(np.float32(a)) for a in window]
    assert rec["merchants"] == [merchant_code(m) for m in merchants]
    assert rec["count"] == 4 and rec["last_ts"] == T0 + 3720.5 and rec["last_offset"] == 4
    np.testing.assert_array_equal(np.asarray(rec["hidden"], np.float32), hidden[0])


def test_one_batch_equals_one_event_at_a_time_bit_for_bit(gru: LoadedModel) -> None:
    """atol=0: a row's result does not depend on the batch (see test_batch_shapes.py)."""
    events = generated_events(3000)
    batched = PartitionScorer(0, MemoryStore(), gru, 10, 30 * DAY, batch_max=1024).score(events)
    single = PartitionScorer(0, MemoryStore(), gru, 10, 30 * DAY, batch_max=1).score(events)
    a, b = strip_latency(batched.lines), strip_latency(single.lines)
    assert [x["transaction_id"] for x in a] == [e.tx.transaction_id for e in events]
    assert a == b


def test_replayed_events_are_not_applied_twice_and_emit_identical_lines(gru: LoadedModel) -> None:
    events = generated_events(2000)
    store = MemoryStore()
    scorer = PartitionScorer(0, store, gru, 10, 30 * DAY)
    first = scorer.score(events[:1500])
    snapshot = dict(store._data)
    # A crash rewinds the input to offset 1000: 500 replayed events, then 500 new ones.
    again = scorer.score(events[1000:])
    assert again.replayed == 500
    assert again.lines[:500] == first.lines[1000:]
    clean_store = MemoryStore()
    clean = PartitionScorer(0, clean_store, gru, 10, 30 * DAY).score(events)
    assert strip_latency(again.lines[500:]) == strip_latency(clean.lines[1500:])
    users = {e.tx.user_id for e in events}
    for u in users:
        got = decode_one(store.get_many([user_key(u)])[0] or b"")
        want = decode_one(clean_store.get_many([user_key(u)])[0] or b"")
        assert got == want
    assert snapshot != store._data


def test_idle_user_starts_fresh_and_sweep_deletes_expired(gru: LoadedModel) -> None:
    store = MemoryStore()
    # A clock of rank 1 (the newest event) so that one event moves it (the default needs 100).
    scorer = PartitionScorer(0, store, gru, 10, ttl_seconds=7 * DAY, policy=TimePolicy(rank=1))
    scorer.score(
        [
            event("old", 50.0, T0, "m1", 0),
            event("old", 60.0, T0 + 60, "m1", 1),
            event("keep", 5.0, T0 + 5 * DAY, "m2", 2),
        ]
    )
    late = scorer.score([event("old", 70.0, T0 + 60 + 7 * DAY + 1, "m3", 3)])
    newcomer = PartitionScorer(0, MemoryStore(), gru, 10, 7 * DAY).score(
        [event("old", 70.0, T0 + 60 + 7 * DAY + 1, "m3", 3)]
    )
    assert late.expired == 1
    assert strip_latency(late.lines) == strip_latency(newcomer.lines)
    assert decode_one(store.get_many([user_key("old")])[0] or b"")["count"] == 1

    # Advance the clock far beyond "keep"'s TTL (+ a day of lateness): the sweep deletes it,
    # but only once its last offset is below the replay-safe offset.
    scorer.score([event("other", 1.0, T0 + 30 * DAY, "m4", 4)])
    cursor, deleted = scorer.sweep(b"u", 100, safe_offset=2)
    assert (cursor, deleted) == (None, 0)
    cursor, deleted = scorer.sweep(b"u", 100, safe_offset=5)
    assert deleted == 2  # "keep" (day 5) and "old" (day 7) are beyond 30 - 7 - 1 days
    assert store.get_many([user_key("keep"), user_key("old")]) == [None, None]
    assert store.get_many([user_key("other")])[0] is not None


def test_sweep_walks_the_key_space_in_chunks(gru: LoadedModel) -> None:
    store = MemoryStore()
    scorer = PartitionScorer(0, store, gru, 10, ttl_seconds=DAY, policy=TimePolicy(rank=1))
    scorer.score([event(f"u{i:03d}", 9.0, T0, "m", i) for i in range(25)])
    scorer.score([event("late", 9.0, T0 + 10 * DAY, "m", 25)])
    cursor: bytes | None = b"u"
    total = 0
    steps = 0
    while cursor is not None:
        cursor, deleted = scorer.sweep(cursor, 10, safe_offset=100)
        total += deleted
        steps += 1
    assert total == 25 and steps == 3


def test_stateless_model_stores_no_hidden_state(stateless: LoadedModel) -> None:
    store = MemoryStore()
    scored = PartitionScorer(0, store, stateless, 10, 30 * DAY).score(generated_events(500))
    assert all(0.0 <= json.loads(line)["probability"] <= 1.0 for line in scored.lines)
    value = next(iter(store._data.values()))
    assert decode_one(value)["hidden_size"] == 0


def test_a_new_model_resets_hidden_state_but_keeps_the_window(
    gru: LoadedModel, stateless: LoadedModel
) -> None:
    store = MemoryStore()
    PartitionScorer(0, store, stateless, 10, 30 * DAY).score([event("bob", 10.0, T0, "m", 0)])
    st = decode(store.get_many([user_key("bob")]), 10, gru.hidden_size, gru.tag)
    assert st.count[0] == 1 and not st.hidden.any()
    scored = PartitionScorer(0, store, gru, 10, 30 * DAY).score(
        [event("bob", 11.0, T0 + 1, "m", 1)]
    )
    assert json.loads(scored.lines[0])["model"] == gru.label
    rec = decode_one(store.get_many([user_key("bob")])[0] or b"")
    assert rec["count"] == 2 and rec["hidden_size"] == gru.hidden_size


@pytest.mark.parametrize("cache_bytes", [130_000, 1 << 24])
def test_the_record_cache_changes_no_score_and_no_record(
    gru: LoadedModel, cache_bytes: int
) -> None:
    """With the cache (small: emptied again and again; large: everyone fits), as without it."""
    events = generated_events(3000, users=200)
    plain_store, cached_store = MemoryStore(), MemoryStore()
    plain = PartitionScorer(0, plain_store, gru, 10, 30 * DAY, batch_max=256)
    cached = PartitionScorer(0, cached_store, gru, 10, 30 * DAY, 256, cache_bytes=cache_bytes)
    for lo in range(0, len(events), 500):
        a = plain.score(events[lo : lo + 500])
        b = cached.score(events[lo : lo + 500])
        assert strip_latency(b.lines) == strip_latency(a.lines)

    # Records and marks alike (outbox entries hold the lines: their latency_ms differs).
    def kept(store: MemoryStore) -> dict[bytes, bytes]:
        return {k: v for k, v in store._data.items() if not k.startswith(b"o")}

    assert kept(cached_store) == kept(plain_store) and len(kept(plain_store)) > 200
    users = len({ev.tx.user_id for ev in events})
    assert cached.cache.hits > 0
    # Large: each user is read from the store once; small: again after each emptying.
    assert cached.cache.misses == users if cache_bytes > 1e6 else cached.cache.misses > users


def test_a_swept_user_is_new_again_with_the_cache(gru: LoadedModel) -> None:
    """The sweep deletes a record from the store and from the cache: its user starts afresh."""
    store = MemoryStore()
    scorer = PartitionScorer(
        0, store, gru, 10, ttl_seconds=DAY, policy=TimePolicy(rank=1), cache_bytes=1 << 20
    )
    scorer.score([event("gone", 9.0, T0, "m", 0), event("gone", 9.5, T0 + 60, "m", 1)])
    scorer.score([event("other", 1.0, T0 + 10 * DAY, "m", 2)])
    _, deleted = scorer.sweep(b"u", 100, safe_offset=3)
    assert deleted == 1 and store.get_many([user_key("gone")]) == [None]
    scorer.score([event("gone", 10.0, T0 + 10 * DAY + 1, "m", 3)])
    assert decode_one(store.get_many([user_key("gone")])[0] or b"")["count"] == 1


class Crash(Exception):
    """The process dies here: what the interrupted call would have written is lost."""


class CrashingStore:
    """A store that dies at its `at`-th write (`write` or `delete_range`); reads pass through."""

    def __init__(self, inner: RocksStore, at: int) -> None:
        self.inner = inner
        self.at = at
        self.calls = 0

    def _tick(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise Crash

    def write(self, *args: object, **kwargs: object) -> None:
        self._tick()
        self.inner.write(*args, **kwargs)  # type: ignore[arg-type]

    def delete_range(self, begin: bytes, end: bytes) -> None:
        self._tick()
        self.inner.delete_range(begin, end)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("crash_at", [1, 2])
def test_a_crash_while_pruning_the_outbox_resumes_cleanly(
    tmp_path: Path, gru: LoadedModel, crash_at: int
) -> None:
    """Pruning and the replay floor move together: a resume from the floor finds every line."""
    events = generated_events(1500)
    store = RocksStore(tmp_path / "db")
    # Batches of 100: outbox entries keyed 99, 199, ...; pruning below 1000 drops ten.
    first = PartitionScorer(0, store, gru, 10, 30 * DAY, batch_max=100).score(events)
    crashing = CrashingStore(store, crash_at)
    with contextlib.suppress(Crash):
        PartitionScorer(0, crashing, gru, 10, 30 * DAY).prune_outbox(1000)  # type: ignore[arg-type]
    store.close()

    # The restart: the input is replayed from no earlier than the store's replay floor.
    store = RocksStore(tmp_path / "db")
    floor_bytes, high_water = store.get_many([REPLAY_FLOOR_KEY, HIGH_WATER_KEY])
    floor = int.from_bytes(floor_bytes or bytes(8), "big")
    assert floor in (0, 1000)
    resumed = PartitionScorer(0, store, gru, 10, 30 * DAY)
    resumed.high_water = int.from_bytes(high_water or bytes(8), "big")
    again = resumed.score(events[floor:])
    assert again.replayed == 1500 - floor
    assert again.lines == first.lines[floor:]
    assert (floor == 1000) == (crash_at > 1)  # one write: it happened entirely or not at all
    store.close()
