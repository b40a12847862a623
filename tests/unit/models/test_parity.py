"""Training-serving parity: the streaming path reproduces the sequence-form model."""

from __future__ import annotations

import json

import numpy as np

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.parse import parse_message
from bytewax_fraud.records import Event, RawMessage
from bytewax_fraud.scoring import PartitionScorer
from bytewax_fraud.state.rocksdb import RocksStore
from models.evaluate import GRU_FILE, GRU_SEQ_FILE, MODELS_DIR, featurize, score_gru_sequence

USERS = 200
EVENTS = 12_000


def test_streaming_equals_sequence_model_for_200_users(tmp_path) -> None:  # type: ignore[no-untyped-def]
    gen = TransactionGenerator(users=USERS, seed=9)
    cols = gen.columns(EVENTS)
    assert len(np.unique(cols.user_index)) == USERS
    offline = score_gru_sequence(MODELS_DIR / GRU_SEQ_FILE, featurize(cols))

    # Serving: batches of users, one wave per event rank, hidden state through the codec
    # and RocksDB between batches; no TTL expiry so both sides see whole histories.
    model = ModelLoader().load(MODELS_DIR / GRU_FILE)
    store = RocksStore(tmp_path / "db")
    scorer = PartitionScorer(0, store, model, window=10, ttl_seconds=1e12, batch_max=256)
    events = []
    for offset, value in zip(range(EVENTS), gen.events(), strict=False):
        ev = parse_message(RawMessage(value, None, "generator", 0, offset, None, 0))
        assert isinstance(ev, Event)
        events.append(ev)
    online = []
    for i in range(0, EVENTS, 256):
        online += [
            json.loads(line)["probability"] for line in scorer.score(events[i : i + 256]).lines
        ]
    store.close()

    diff = np.abs(np.asarray(online) - offline)
    assert diff.max() <= 1e-5, f"max abs difference {diff.max():.2e}"
