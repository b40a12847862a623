"""The run's status and summary count what this run did (replays were counted by the first run)."""

from __future__ import annotations

import time
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


def _random_batches(n: int) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(11)
    out = []
    for _ in range(n):
        size = int(rng.integers(0, 50))
        lat = rng.exponential(10.0, size)
        lat[rng.random(size) < 0.05] = np.nan  # replays: not timed
        probs = rng.random(size).astype(np.float32)
        labels = rng.integers(-1, 2, size).astype(np.int8)
        out.append((lat, probs, labels))
    return out


def test_histograms_added_up_in_groups_equal_each_batch_added_at_once() -> None:
    at_once, grouped = RunStats(settle_every=1), RunStats()
    for i, (lat, probs, labels) in enumerate(_random_batches(200)):
        scores = {"a@1": probs} if i % 3 else {"a@1": probs, "b@2": probs[::-1].copy()}
        score_labels = {k: labels for k in scores}
        for stats in (at_once, grouped):
            stats.record_scored(
                lat, probs, labels, 1, 0, i % 4, [1e-4] * (i % 3), scores, score_labels
            )
    assert len(grouped._pending) == 200 % grouped.settle_every  # some not added up yet
    # Every reader adds up what is gathered first: the summaries are the same.
    s1, s2 = at_once.summary(), grouped.summary()
    for s in (s1, s2):
        del s["elapsed_s"], s["events_per_s"], s["scoring_s"], s["scoring_cpu_s"]
    assert s1 == s2
    for name in ("batch_sizes", "inference_seconds", "latency_seconds"):
        h1, h2 = getattr(at_once, name), getattr(grouped, name)
        assert np.array_equal(h1.counts, h2.counts) and h1.sum == h2.sum, name
    assert list(at_once.scores) == list(grouped.scores) == ["a@1", "b@2"]
    for label, h in at_once.scores.items():
        assert np.array_equal(h.counts, grouped.scores[label].counts)
        assert h.sum == grouped.scores[label].sum
    for label, q in at_once.quality.items():
        assert np.array_equal(q.positives, grouped.quality[label].positives)
        assert np.array_equal(q.negatives, grouped.quality[label].negatives)
    assert np.array_equal(at_once.total.hist, grouped.total.hist)
    # The status line's rate depends on the clock; everything after it must agree.
    assert at_once.status_line().split("|")[1:] == grouped.status_line().split("|")[1:]


def test_a_reader_sees_batches_not_yet_added_up() -> None:
    stats = RunStats()
    stats.record_scored(np.array([4.0, 40.0]), np.array([0.1, 0.9]), np.array([0, 1]), 0, 0)
    assert stats.latency_seconds.count == 0  # gathered, not yet added up
    summary = stats.summary()
    assert summary["p99_ms"] > 30.0 and stats.latency_seconds.count == 2


def test_summary_says_what_scoring_cost_the_process_without_its_start_up() -> None:
    stats = RunStats()
    assert (stats.summary()["scoring_s"], stats.summary()["scoring_cpu_s"]) == (0.0, 0.0)
    lat = np.array([1.0, 2.0])
    probs, labels = np.array([0.1, 0.9], np.float32), np.array([0, 1])
    time.sleep(0.2)  # start-up: not counted
    stats.record_scored(lat, probs, labels, 0, 0)
    burn = time.process_time() + 0.15
    while time.process_time() < burn:  # the process works between the first and last batch
        pass
    stats.record_scored(lat, probs, labels, 0, 0)
    s = stats.summary()
    assert 0.15 <= s["scoring_cpu_s"] < 0.5
    assert s["scoring_s"] >= 0.9 * s["scoring_cpu_s"]  # one busy thread: wall >= CPU
    assert s["elapsed_s"] - s["scoring_s"] >= 0.19  # the sleep before the first batch
