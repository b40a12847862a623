"""Runs and waves: a hot user's run goes through the model in one call, with the same results.

Scores and records are compared bit for bit (atol=0): on ONNX Runtime's CPU provider a
row's result does not depend on how many rows share the call, so the batch size and
the batch shape (runs through the sequence form, or waves through the step model)
change nothing. The Kafka recovery tests rely on this: batch cuts there depend on timing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bytewax_fraud.admission.event_time import TimePolicy
from bytewax_fraud.batch_shapes import Groups, group, runs_pay
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.inference.sequence import batch_shape, without_sequence_form
from bytewax_fraud.records import Event, EventBatch, ScoredBatch, Transaction
from bytewax_fraud.scoring import PartitionScorer
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.status import RunStats
from bytewax_fraud.telemetry import StatsCollector
from models import graphs

MODELS = Path(__file__).resolve().parents[2] / "models"
T0 = 1_767_225_600.0
TTL = 3600.0
POLICY = TimePolicy(allowed_lateness=600.0)


@pytest.fixture(scope="module")
def sequence_model() -> LoadedModel:
    model = ModelLoader().load(MODELS / "fraud_gru.onnx")
    assert batch_shape(model).sequence is not None
    return model


@pytest.fixture(scope="module")
def wave_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The same file, alone in a directory: the sequence form it declares is not beside it."""
    alone = tmp_path_factory.mktemp("alone") / "fraud_gru.onnx"
    shutil.copyfile(MODELS / "fraud_gru.onnx", alone)
    model = ModelLoader().load(alone, model_id="waves")
    assert not batch_shape(model).runs
    return model


def event(user: str, amount: float, ts: float, merchant: str, offset: int) -> Event:
    tx = Transaction(
        transaction_id=f"t{offset}",
        user_id=user,
        amount=amount,
        currency="USD",
        timestamp=ts,
        merchant=merchant,
        label=int(offset % 50 == 0),
    )
    return Event(tx, 0, offset, 0)


def skewed_events(n: int = 3000) -> list[Event]:
    """35 % of the events from one user, with what makes a run irregular mixed in.

    The hot user pauses longer than the TTL (its next run starts with an expiry in the
    middle of a batch), sends one event too far behind its last one (rejected) and one
    a little behind (scored late).
    """
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        hot = rng.random() < 0.35 and not 1000 <= i < 1400  # 4,000 s of silence > TTL
        user = "hot" if hot or i in (2000, 2100) else f"u{rng.integers(60)}"
        ts = T0 + 10.0 * i - (1200.0 if i == 2000 else 300.0 if i == 2100 else 0.0)
        amount = float(np.round(rng.lognormal(3, 1), 2))
        out.append(event(user, amount, ts, f"m{rng.integers(20)}", i))
    return out


def scored_run(
    model: LoadedModel, events: list[Event], batch_max: int
) -> tuple[list[dict[str, object]], list[tuple[int, str]], dict[bytes, bytes], ScoredBatch]:
    store = MemoryStore()
    scorer = PartitionScorer(0, store, model, 10, TTL, batch_max=batch_max, policy=POLICY)
    scored = scorer.score(events)
    lines = []
    for line in scored.lines:
        d = json.loads(line)
        del d["latency_ms"], d["model"]
        lines.append(d)
    dead = [(d.origin.offset, d.reason) for d in scored.dead_letters]
    # User records and marks (outbox entries hold whole lines, latency included).
    kept = {k: v for k, v in store._data.items() if not k.startswith(b"o")}
    return lines, dead, kept, scored


def test_scores_and_records_are_bitwise_equal_across_batch_shapes(
    sequence_model: LoadedModel, wave_model: LoadedModel
) -> None:
    events = skewed_events()
    want_lines, want_dead, want_state, first = scored_run(wave_model, events, 1)
    assert first.expired >= 1 and first.late_accepted >= 1 and len(want_dead) == 1
    for model in (sequence_model, wave_model):
        for batch_max in (7, 256, 1024):
            lines, dead, state, scored = scored_run(model, events, batch_max)
            assert lines == want_lines, (model.label, batch_max)  # probabilities: atol=0
            assert dead == want_dead and state == want_state, (model.label, batch_max)
            assert scored.expired == first.expired
            assert scored.late_accepted == first.late_accepted
            if model is sequence_model and batch_max > 7:
                assert scored.sequence_calls > 0


def test_a_hot_users_run_is_one_model_call(
    sequence_model: LoadedModel, wave_model: LoadedModel
) -> None:
    events = [event("hot", 10.0 + i % 7, T0 + i, "m", i) for i in range(300)]
    events += [event(f"u{i}", 5.0, T0 + 300 + i, "m", 300 + i) for i in range(100)]
    runs = PartitionScorer(0, MemoryStore(), sequence_model, 10, TTL).score(events)
    waves = PartitionScorer(0, MemoryStore(), wave_model, 10, TTL).score(events)
    # Two run lengths (300 and 1): two calls; waves: one per event of the hot user.
    assert len(runs.inference_seconds) == 2 and runs.sequence_calls == 1
    assert len(waves.inference_seconds) == 300 and waves.sequence_calls == 0
    assert np.array_equal(runs.probabilities, waves.probabilities)


def test_a_stateless_model_takes_runs_without_a_sequence_form() -> None:
    model = ModelLoader().load(MODELS / "fraud_stateless.onnx")
    assert batch_shape(model).runs and batch_shape(model).sequence is None
    events = skewed_events(1500)
    runs = scored_run(model, events, 1024)
    one_by_one = scored_run(model, events, 1)
    assert runs[:3] == one_by_one[:3]
    # One call per batch for the regular runs; waves for the few users whose runs have a
    # gap longer than the TTL inside a batch.
    assert len(runs[3].inference_seconds) < 40 < len(one_by_one[3].inference_seconds)


def test_a_model_without_a_sequence_form_is_served_in_waves_and_says_so(
    wave_model: LoadedModel, sequence_model: LoadedModel, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.onnx"
    plain.write_bytes(without_sequence_form((MODELS / "fraud_gru.onnx").read_bytes()))
    shutil.copyfile(MODELS / "fraud_gru_seq.onnx", tmp_path / "fraud_gru_seq.onnx")
    stripped = ModelLoader().load(plain)
    assert "declares no sequence form" in batch_shape(stripped).reason
    assert "fraud_gru_seq.onnx" in batch_shape(wave_model).reason
    stats = RunStats(
        model=sequence_model.label,
        batch_shapes={
            sequence_model.label: batch_shape(sequence_model).reason,
            wave_model.label: batch_shape(wave_model).reason,
        },
    )
    stats.sequence_calls = 3
    line = stats.status_line()
    assert f"waves for {wave_model.label}: " in line
    assert f"waves for {sequence_model.label}" not in line
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    m = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for x in family.samples
    }
    assert m[("fraud_model_sequence_form", (("model", sequence_model.label),))] == 1
    assert m[("fraud_model_sequence_form", (("model", wave_model.label),))] == 0
    assert m[("fraud_sequence_calls_total", ())] == 3


def _declaring(tmp_path: Path, seq_name: str, seq_bytes: bytes, written: bytes) -> LoadedModel:
    """A copy of the step model declaring `seq_bytes`, with `written` saved under that name."""
    step = onnx.load(str(MODELS / "fraud_gru.onnx"))
    onnx.save(graphs.declare_sequence_form(step, seq_name, seq_bytes), str(tmp_path / "m.onnx"))
    (tmp_path / seq_name).write_bytes(written)
    return ModelLoader().load(tmp_path / "m.onnx", model_id=tmp_path.name)


def test_a_sequence_form_that_cannot_be_followed_falls_back_with_the_reason(
    tmp_path: Path,
) -> None:
    seq = (MODELS / "fraud_gru_seq.onnx").read_bytes()
    step = (MODELS / "fraud_gru.onnx").read_bytes()
    (tmp_path / "a").mkdir()
    changed = _declaring(tmp_path / "a", "s.onnx", seq, seq + b"\0")
    assert "ship the two files together" in batch_shape(changed).reason
    (tmp_path / "b").mkdir()
    not_sequence = _declaring(tmp_path / "b", "s.onnx", step, step)
    assert "does not match" in batch_shape(not_sequence).reason

    # Right shapes, other weights: the load-time probe tells them apart.
    rng = np.random.default_rng(1)
    h, f = 128, N_FEATURES

    def r(*shape: int) -> np.ndarray:
        return rng.normal(scale=0.1, size=shape).astype(np.float32)

    other = graphs.GruWeights(
        mean=np.zeros(f, np.float32),
        std=np.ones(f, np.float32),
        weight_ih=r(3 * h, f),
        weight_hh=r(3 * h, h),
        bias_ih=r(3 * h),
        bias_hh=r(3 * h),
        head=(graphs.Dense(r(h, 64), r(64)), graphs.Dense(r(64, 1), r(1))),
    )
    other_seq = graphs.gru_sequence_model(other).SerializeToString()
    (tmp_path / "c").mkdir()
    impostor = _declaring(tmp_path / "c", "s.onnx", other_seq, other_seq)
    assert "not the same network" in batch_shape(impostor).reason
    for model in (changed, not_sequence, impostor):
        events = [event("hot", 10.0, T0 + i, "m", i) for i in range(20)]
        scored = PartitionScorer(0, MemoryStore(), model, 10, TTL).score(events)
        assert len(scored.inference_seconds) == 20  # waves


def test_runs_are_taken_where_they_save_calls() -> None:
    def groups(users: list[str]) -> Groups:
        return group(
            EventBatch.from_events([event(u, 1.0, T0, "m", i) for i, u in enumerate(users)])
        )

    even = [f"u{i % 400}" for i in range(1000)]  # 2-3 events each: 3 waves, 2 run lengths
    assert not runs_pay(groups(even))
    assert runs_pay(groups(even + ["hot"] * 40))  # 40 waves against 3 run lengths
    assert runs_pay(groups(["one"] * 50))  # a single user
