"""The run's status and summary count what this run did (replays were counted by the first run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.parse import parse_message
from bytewax_fraud.records import Event, RawMessage, ScoredBatch
from bytewax_fraud.scoring import PartitionScorer
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.status import RunStats

MODELS = Path(__file__).resolve().parents[2] / "models"
DAY = 86400.0


def generated_events(n: int) -> list[Event]:
    values = TransactionGenerator(users=300, seed=7).events()
    out = []
    for i, value in zip(range(n), values, strict=False):
        ev = parse_message(RawMessage(value, None, "generator", 0, i, None, 0))
        assert isinstance(ev, Event)
        out.append(ev)
    return out


@pytest.fixture(scope="module")
def gru() -> LoadedModel:
    return ModelLoader().load(MODELS / "fraud_gru.onnx")


def record(stats: RunStats, s: ScoredBatch) -> None:
    stats.record_scored(s.latencies_ms, s.probabilities, s.labels, s.replayed, s.expired)


def test_recall_after_a_resume_counts_only_events_scored_in_this_run(gru: LoadedModel) -> None:
    events = generated_events(3000)
    store = MemoryStore()
    PartitionScorer(0, store, gru, 10, 30 * DAY).score(events[:2000])

    # The resumed process: the input rewinds to offset 1000 (1000 replays, then 1000 new).
    resumed = PartitionScorer(0, store, gru, 10, 30 * DAY)
    resumed.high_water = 2000
    scored = resumed.score(events[1000:])
    assert scored.replayed == 1000 and int((scored.labels[:1000] == 1).sum()) > 0
    stats = RunStats()
    record(stats, scored)

    p, y = scored.probabilities[1000:], scored.labels[1000:]
    flagged = p >= stats.threshold
    assert stats.true_pos == int((flagged & (y == 1)).sum())
    assert stats.false_neg == int((~flagged & (y == 1)).sum())
    assert stats.false_pos == int((flagged & (y == 0)).sum())

    # A run that only replays has scored nothing: no recall, not a recall of 0.
    only_replays = RunStats()
    record(only_replays, resumed.score(events[1000:2000]))
    summary = only_replays.summary()
    assert summary["recall"] is None and summary["precision"] is None
    assert np.isnan(resumed.score(events[1000:1001]).probabilities).all()
