"""Recovery-replay: SIGKILL the job at random points, resume, compare with a clean run."""

from __future__ import annotations

import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from recovery_harness import (
    FileOutputs,
    JobDirs,
    assert_interrupted,
    kill_running,
    live_records,
    predictions,
    run,
    run_with_kills,
    start,
)

EVENTS = 200_000
BASE = {"FRAUD_EVENTS": EVENTS, "FRAUD_USERS": 20_000, "FRAUD_PARTITIONS": 4, "FRAUD_SEED": 5}
TTL = 12 * 3600.0
TTL_ENV = {**BASE, "FRAUD_STATE_TTL": "12h", "FRAUD_SWEEP_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> JobDirs:
    """One uninterrupted run, the reference for every crash test."""
    dirs = JobDirs(tmp_path_factory.mktemp("clean"))
    err = run(dirs, **TTL_ENV)
    # The TTL must actually fire in this run, or the crash tests could not catch a
    # replay that changes an expiry decision.
    expired = re.search(r"expired ([\d,]+)", err)
    assert expired and int(expired.group(1).replace(",", "")) > 100, err[-500:]
    return dirs


def assert_same_as_clean(dirs: JobDirs, clean: JobDirs) -> None:
    got, want = predictions(dirs.out), predictions(clean.out)
    assert len(want) == EVENTS
    assert got == want
    assert live_records(dirs.state, TTL) == live_records(clean.state, TTL)


def test_random_kills_lose_nothing_and_apply_nothing_twice(tmp_path: Path, clean: JobDirs) -> None:
    dirs = JobDirs(tmp_path)
    hits = run_with_kills(
        dirs,
        kills=3,
        rng=random.Random(11),
        clean_outputs=EVENTS,
        window=(0.2, 1.5),
        after_output=True,
        **TTL_ENV,
    )
    assert hits == 3
    assert_same_as_clean(dirs, clean)


@pytest.mark.slow
def test_soak_twelve_random_kills(tmp_path: Path, clean: JobDirs) -> None:
    dirs = JobDirs(tmp_path)
    hits = run_with_kills(
        dirs,
        kills=12,
        rng=random.Random(7),
        clean_outputs=EVENTS,
        window=(0.1, 0.8),
        after_output=True,
        **TTL_ENV,
    )
    assert hits == 12
    assert_same_as_clean(dirs, clean)


def test_kill_inside_a_snapshot(tmp_path: Path, clean: JobDirs) -> None:
    dirs = JobDirs(tmp_path)
    p = start(dirs, TEST_FAULT_KILL_AT_SNAPSHOT=9, **TTL_ENV)
    p.wait(timeout=120)
    assert_interrupted([p], FileOutputs(dirs.out / "predictions.jsonl"), EVENTS)
    run(dirs, **TTL_ENV)
    assert_same_as_clean(dirs, clean)


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param([["-w", "1"], ["-w", "2"]], id="1-to-2-workers"),
        pytest.param([["-w", "2"], ["-w", "1"]], id="2-to-1-workers"),
    ],
)
def test_rescale_on_resume(tmp_path: Path, clean: JobDirs, plan: list[list[str]]) -> None:
    dirs = JobDirs(tmp_path)
    hits = run_with_kills(
        dirs,
        kills=1,
        rng=random.Random(3),
        clean_outputs=EVENTS,
        args_per_run=plan,
        window=(0.3, 1.0),
        after_output=True,
        **TTL_ENV,
    )
    assert hits == 1
    assert_same_as_clean(dirs, clean)


def test_two_processes_then_one(tmp_path: Path, clean: JobDirs) -> None:
    import socket
    import time

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    addresses = ";".join(f"127.0.0.1:{p}" for p in ports)
    dirs = JobDirs(tmp_path)
    procs = [start(dirs, ["-i", str(i), "-a", addresses], **TTL_ENV) for i in range(2)]
    outputs = FileOutputs(dirs.out / "predictions.jsonl")
    # Kill the cluster mid-run: once it has scored a fifth of the events.
    deadline = time.monotonic() + 120
    while outputs.count() < EVENTS // 5:
        assert all(p.poll() is None for p in procs), "a process ended before the kill"
        assert time.monotonic() < deadline, "the cluster wrote too little within 120 s"
        time.sleep(0.02)
    kill_running(procs, outputs, EVENTS)
    run(dirs, **TTL_ENV)
    assert_same_as_clean(dirs, clean)


def _used(tmp_path: Path) -> JobDirs:
    dirs = JobDirs(tmp_path / "job")
    run(dirs, **{**BASE, "FRAUD_EVENTS": 2000})
    return dirs


def _fails(dirs: JobDirs, needle: str, **env: object) -> None:
    p = start(dirs, **{**BASE, "FRAUD_EVENTS": 4000, **env})  # type: ignore[arg-type]
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert needle in err.decode(), err.decode()[-2000:]


def test_deleted_partition_store_is_a_named_error(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    shutil.rmtree(dirs.state / "partition-0002")
    _fails(dirs, "RecoveryError")


def test_truncated_recovery_file_is_a_named_error(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    part = dirs.recovery / "part-0.sqlite3"
    part.write_bytes(part.read_bytes()[:100])
    _fails(dirs, "damaged")


def test_truncated_state_file_is_a_named_error(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    current = dirs.state / "partition-0001" / "CURRENT"
    current.write_bytes(b"")
    _fails(dirs, "cannot open the state store")


def test_recovery_dir_of_another_run_is_a_named_error(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    other = _used(tmp_path / "other")
    shutil.rmtree(dirs.recovery)
    shutil.copytree(other.recovery, dirs.recovery)
    _fails(dirs, "belongs to another run")


def test_missing_recovery_dir_is_a_named_error(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    shutil.rmtree(dirs.recovery)
    _fails(dirs, "has no snapshots")


def test_recovery_db_is_sqlite(tmp_path: Path) -> None:
    dirs = _used(tmp_path)
    with sqlite3.connect(dirs.recovery / "part-0.sqlite3") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_kill_after_the_job_ended_fails_the_test(tmp_path: Path) -> None:
    """The kill proof itself: a job that finished and exited before the kill is no crash test."""
    with pytest.raises(AssertionError, match="ended .* before its kill"):
        run_with_kills(
            JobDirs(tmp_path),
            kills=1,
            rng=random.Random(1),
            clean_outputs=10**6,  # never reached: the kill waits for the job's end
            window=(60.0, 60.0),
            **{**BASE, "FRAUD_EVENTS": 2_000},
        )


def test_a_kill_after_every_output_was_written_fails_the_test(tmp_path: Path) -> None:
    """The kill proof itself: a process still running but done with its work is no crash test.

    A process that writes 2,000 outputs and then waits stands in for the job: a real job
    exits right after its last output, and killing it in between was a race.
    """
    out = tmp_path / "predictions.jsonl"
    script = (
        "import json, sys, time\n"
        "with open(sys.argv[1], 'w') as f:\n"
        "    f.writelines(json.dumps({'transaction_id': f't{i}'}) + '\\n' for i in range(2000))\n"
        "time.sleep(120)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", script, str(out)], stderr=subprocess.PIPE)
    counter = FileOutputs(out)
    deadline = time.monotonic() + 60
    while counter.count() < 2000:
        assert p.poll() is None and time.monotonic() < deadline, "the stand-in wrote nothing"
        time.sleep(0.02)
    with pytest.raises(AssertionError, match="had written all 2000 outputs"):
        kill_running([p], counter, 2000)
