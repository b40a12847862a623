"""Random kills with inputs that lie: late, far-ahead and misrouted events mixed into the run.

The faulty run (`TEST_FAULT_INPUTS_EVERY`: tests/system/fault_job.py and fault_inputs.py) is
compared with its clean twin, the same good events at the same offsets without
the faulty ones: predictions and user records must be identical, and every
faulty event must be a dead letter, once, with the same reason as in an
uninterrupted faulty run.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from fault_inputs import FaultPlan
from recovery_harness import JobDirs, live_records, predictions, run, run_with_kills

from bytewax_fraud.connectors.generator_source import partition_quota

EVERY = 97
TTL = 12 * 3600.0


def _env(events: int, users: int, twin: bool = False) -> dict[str, object]:
    return {
        "FRAUD_EVENTS": events,
        "FRAUD_USERS": users,
        "FRAUD_PARTITIONS": 4,
        "FRAUD_SEED": 9,
        "FRAUD_STATE_TTL": "12h",
        "FRAUD_SWEEP_INTERVAL": "0.2",
        "TEST_FAULT_INPUTS_EVERY": EVERY,
        "TEST_FAULT_INPUTS_TWIN": int(twin),
    }


def dead_letters(out: Path) -> list[str]:
    """The dead-letter lines, sorted (sinks may interleave partitions differently)."""
    return sorted((out / "dead_letters.jsonl").read_text().splitlines())


def expected_faults(events: int) -> Counter[tuple[int, str]]:
    """(partition, error class) of every faulty offset the plan puts in the run."""
    plan = FaultPlan(EVERY)
    classes = {
        "early": "TimestampTooFarAhead",
        "late": "TimestampTooLate",
        "misrouted": "WrongPartition",
    }
    got: Counter[tuple[int, str]] = Counter()
    for p in range(4):
        quota = partition_quota(events, 4, p) or 0
        for o in range(quota):
            if plan.is_fault(o):
                got[(p, classes[plan.kind(o)])] += 1
    return got


class Pair:
    """An uninterrupted faulty run and its clean twin."""

    def __init__(self, root: Path, events: int, users: int) -> None:
        self.events, self.users = events, users
        self.twin = JobDirs(root / "twin")
        run(self.twin, **_env(events, users, twin=True))
        self.faulty = JobDirs(root / "faulty")
        err = run(self.faulty, **_env(events, users))
        assert "expired" in err
        #: Distinct predictions of a whole run (faulty events have none).
        self.clean_outputs = len(predictions(self.twin.out))

    def check(self, dirs: JobDirs) -> None:
        """`dirs` holds exactly what the uninterrupted faulty run holds, and the twin's state."""
        want = predictions(self.twin.out)
        assert len(want) > 0.95 * self.events
        assert predictions(dirs.out) == want
        assert live_records(dirs.state, TTL) == live_records(self.twin.state, TTL)
        assert dead_letters(dirs.out) == dead_letters(self.faulty.out)


def _pair(tmp_path_factory: pytest.TempPathFactory, events: int, users: int) -> Pair:
    pair = Pair(tmp_path_factory.mktemp("faults"), events, users)
    # The uninterrupted faulty run itself: the twin's predictions and records, and one
    # dead letter per faulty event, of its class.
    assert predictions(pair.faulty.out) == predictions(pair.twin.out)
    assert live_records(pair.faulty.state, TTL) == live_records(pair.twin.state, TTL)
    dead = [json.loads(line) for line in dead_letters(pair.faulty.out)]
    got = Counter((d["origin"]["partition"], d["error_class"]) for d in dead)
    assert got == expected_faults(events)
    assert (pair.twin.out / "dead_letters.jsonl").read_text() == ""
    reasons = {d["error_class"]: d["reason"] for d in dead}
    assert "ahead of the record's source timestamp" in reasons["TimestampTooFarAhead"]
    assert "FRAUD_ALLOWED_LATENESS" in reasons["TimestampTooLate"]
    assert "belongs to partition" in reasons["WrongPartition"]
    return pair


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return _pair(tmp_path_factory, 100_000, 10_000)


def test_random_kills_with_lying_inputs_equal_the_clean_twin(tmp_path: Path, small: Pair) -> None:
    dirs = JobDirs(tmp_path)
    hits = run_with_kills(
        dirs,
        kills=3,
        rng=random.Random(13),
        clean_outputs=small.clean_outputs,
        window=(0.2, 1.0),
        after_output=True,
        **_env(small.events, small.users),
    )
    assert hits == 3
    small.check(dirs)


@pytest.mark.slow
def test_soak_ten_random_kills_with_lying_inputs(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    pair = _pair(tmp_path_factory, 200_000, 20_000)
    dirs = JobDirs(tmp_path)
    hits = run_with_kills(
        dirs,
        kills=10,
        rng=random.Random(17),
        clean_outputs=pair.clean_outputs,
        window=(0.1, 0.8),
        after_output=True,
        **_env(pair.events, pair.users),
    )
    assert hits == 10
    pair.check(dirs)
