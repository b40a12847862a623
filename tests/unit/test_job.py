"""The whole dataflow, in-process: exact outputs, determinism, dead letters, state checks."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from bytewax_fraud.connectors import Outputs
from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.errors import RecoveryError, StateError
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.partitioning import partition_for, partition_of_routing_key
from bytewax_fraud.records import DeadLetter, Prediction, RawMessage, ScoredBatch
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.__main__ import show, stats


def settings(tmp: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "events": 4000,
        "users": 400,
        "partitions": 4,
        "seed": 3,
        "state_dir": tmp / "state",
        "output_dir": tmp / "out",
        "status_interval": 0,
        "batch_max": 256,
    }
    base.update(kw)
    return load_settings(**base)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def canonical(preds: list[dict[str, Any]]) -> list[str]:
    """Predictions without the measured latency, sorted by transaction id."""
    return sorted(
        json.dumps({k: v for k, v in p.items() if k != "latency_ms"}, sort_keys=True) for p in preds
    )


def test_embedded_run_scores_every_event_once(tmp_path: Path) -> None:
    s = settings(tmp_path)
    run_main(build_dataflow(s))
    preds = read_lines(s.output_dir / "predictions.jsonl")
    assert len(preds) == 4000
    assert len({p["transaction_id"] for p in preds}) == 4000
    for p in preds[:50]:
        Prediction.model_validate(p)
        assert p["model"].startswith("fraud_gru@")
        assert partition_for(p["user_id"], 4) == p["partition"]
    assert (s.output_dir / "dead_letters.jsonl").read_text() == ""
    summary = stats(s.state_dir)
    assert summary["users"] == len({p["user_id"] for p in preds})
    user = preds[-1]["user_id"]
    rec = show(s.state_dir, user)
    assert rec is not None and rec["user_id"] == user and rec["hidden_size"] == 128


def test_same_input_same_predictions_across_runs_and_worker_counts(tmp_path: Path) -> None:
    a = settings(tmp_path / "a")
    run_main(build_dataflow(a))
    b = settings(tmp_path / "b")
    run_main(build_dataflow(b))
    c = settings(tmp_path / "c")
    cluster_main(build_dataflow(c), [], 0, worker_count_per_proc=2)
    pa, pb, pc = (canonical(read_lines(x.output_dir / "predictions.jsonl")) for x in (a, b, c))
    assert pa == pb
    assert pa == pc


def test_bad_inputs_become_dead_letters_and_valid_neighbours_are_scored(
    tmp_path: Path, bad_corpus: list[dict[str, Any]]
) -> None:
    gen = TransactionGenerator(users=50, seed=1)
    valid = [v for v, _ in zip(gen.events(), range(200), strict=False)]
    offsets = [0] * 4
    msgs: list[RawMessage] = []
    for i, value in enumerate(valid):
        p = partition_for(json.loads(value)["user_id"], 4)
        msgs.append(RawMessage(value, None, "test", p, offsets[p], None, 0))
        offsets[p] += 1
        if i < len(bad_corpus):
            # Bad messages sit at their own offsets between the valid ones.
            msgs.append(RawMessage(bad_corpus[i]["value"], b"k", "test", p, offsets[p], None, 0))
            offsets[p] += 1
    s = settings(tmp_path)
    run_main(build_dataflow(s, source=TestingSource(msgs, batch_size=64)))
    preds = read_lines(s.output_dir / "predictions.jsonl")
    assert sorted(p["transaction_id"] for p in preds) == sorted(
        json.loads(v)["transaction_id"] for v in valid
    )
    dead = [DeadLetter.model_validate(d) for d in read_lines(s.output_dir / "dead_letters.jsonl")]
    assert len(dead) == len(bad_corpus) >= 30
    by_value = {d.value_b64: d for d in dead}
    for case in bad_corpus:
        d = by_value[case["value_b64"]]
        assert d.stage == case["stage"], case["kind"]
        assert case["reason_contains"] in d.reason, case["kind"]
        assert d.origin.source == "test"


def test_each_partition_hands_all_its_outputs_on_in_one_item_per_call_in_input_order(
    tmp_path: Path, bad_corpus: list[dict[str, Any]]
) -> None:
    # What the exactly-once sink relies on to commit between any two items: a partition's
    # predictions and dead letters (parse, misrouting, event time) come in one path, each
    # item holding every output of a range of its input, the ranges in order.
    gen = TransactionGenerator(users=50, seed=1)
    offsets = [0] * 4
    msgs: list[RawMessage] = []
    for i, value in enumerate(v for v, _ in zip(gen.events(), range(400), strict=False)):
        p = partition_for(json.loads(value)["user_id"], 4)
        msgs.append(RawMessage(value, None, "test", p, offsets[p], None, 0))
        offsets[p] += 1
        if i % 5 == 0:
            bad = bad_corpus[(i // 5) % len(bad_corpus)]["value"]
            msgs.append(RawMessage(bad, b"k", "test", p, offsets[p], None, 0))
            offsets[p] += 1
    got: list[tuple[str, Any]] = []
    unused = TestingSink([])
    outputs = Outputs(unused, unused, as_lines=False, exactly_once=TestingSink(got))
    s = settings(tmp_path)
    run_main(build_dataflow(s, source=TestingSource(msgs, batch_size=16), outputs=outputs))
    assert got and all(isinstance(item, ScoredBatch) for _, item in got)
    for p in range(4):
        ranges = []
        for key, item in got:
            if partition_of_routing_key(key) != p:
                continue
            covered = sorted(
                [*item.offsets.tolist(), *(d.origin.offset for d in item.dead_letters)]
            )
            assert covered, "an item with no output"
            ranges.append(covered)
        flat = [o for r in ranges for o in r]
        assert flat == list(range(offsets[p])), f"partition {p}: outputs missing or out of order"
    assert sum(len(item.dead_letters) for _, item in got) == len(range(0, 400, 5))


def test_restart_from_the_beginning_replays_identically_until_outbox_pruning(
    tmp_path: Path,
) -> None:
    """Without recovery data a partition restarts at offset 0: fine while the outbox holds
    every prediction (fencing re-emits them), refused once snapshots have pruned it."""
    s = settings(tmp_path, events=2000)
    run_main(build_dataflow(s))
    first = canonical(read_lines(s.output_dir / "predictions.jsonl"))
    run_main(build_dataflow(s))
    assert canonical(read_lines(s.output_dir / "predictions.jsonl")) == first

    s = settings(tmp_path / "pruned", events=60_000, batch_max=64)
    run_main(build_dataflow(s), epoch_interval=timedelta(milliseconds=20))
    with pytest.raises(Exception) as err:  # noqa: B017 - bytewax wraps errors raised in steps
        run_main(build_dataflow(s))
    cause = err.value.__cause__
    assert isinstance(cause, RecoveryError)
    assert "already holds user state" in str(cause)


def test_another_partition_count_fails_at_start(tmp_path: Path) -> None:
    run_main(build_dataflow(settings(tmp_path, events=100)))
    with pytest.raises(StateError, match="FRAUD_PARTITIONS=8"):
        build_dataflow(settings(tmp_path, partitions=8))


def test_partitions_without_users_end_instead_of_hanging(tmp_path: Path) -> None:
    s = settings(tmp_path, users=3, partitions=8, events=300)
    run_main(build_dataflow(s))
    preds = read_lines(s.output_dir / "predictions.jsonl")
    assert 0 < len(preds) <= 300
    assert len({p["user_id"] for p in preds}) <= 3
