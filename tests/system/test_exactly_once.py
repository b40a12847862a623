"""Exactly-once output on Apache Kafka, proven against a clean twin with read_committed readers.

Every run reads the same 4-partition input (generated events with a malformed
message every `BAD_EVERY`, which become dead letters) and writes its own
topics with `FRAUD_KAFKA_DELIVERY=exactly-once`. A reader with
`isolation.level=read_committed` must see every transaction id exactly once,
with the twin's prediction (latency_ms aside, as it measures the run), and
every dead letter exactly once.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import Broker
from recovery_harness import ROOT, JobDirs, start

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, create_topic
from bytewax_fraud.connectors.kafka.sinks import headers_dict
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

EVENTS = 40_000
USERS = 4_000
SEED = 21
PARTITIONS = 4
BAD_EVERY = 500
KILLER = ROOT / "tests" / "system" / "eos_kill_points.py"

pytestmark = pytest.mark.kafka


def inputs(events: int = EVENTS) -> list[tuple[bytes | None, bytes]]:
    """The generated events with a malformed message (same key) after every BAD_EVERY-th."""
    out: list[tuple[bytes | None, bytes]] = []
    for i, (key, value) in enumerate(generated(USERS, SEED, events)):
        out.append((key, value))
        if i % BAD_EVERY == 0:
            out.append((key, b"{not json " + str(i).encode()))
    return out


@dataclass
class Topics:
    bootstrap: str
    prefix: str

    @property
    def transactions(self) -> str:
        return f"{self.prefix}-transactions"

    def env(self, name: str, **extra: Any) -> dict[str, Any]:
        """Settings of run `name`; creates its output topics."""
        admin = admin_client({"bootstrap.servers": self.bootstrap})
        for t in self.outputs(name):
            create_topic(admin, t, PARTITIONS, config={"max.message.bytes": "8454144"})
        preds, dead = self.outputs(name)
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FRAUD_TOPIC_TRANSACTIONS": self.transactions,
            "FRAUD_TOPIC_PREDICTIONS": preds,
            "FRAUD_TOPIC_DEAD_LETTERS": dead,
            "FRAUD_TOPIC_CONTROL": f"{self.prefix}-no-control",
            "FRAUD_KAFKA_STOP_AT_END": "1",
            "FRAUD_KAFKA_DELIVERY": "exactly-once",
            "FRAUD_PARTITIONS": PARTITIONS,
            "FRAUD_STATE_TTL": "3d",
            **extra,
        }

    def outputs(self, name: str) -> tuple[str, str]:
        return f"{self.prefix}-{name}-predictions", f"{self.prefix}-{name}-dead-letters"


@dataclass
class Outputs:
    """What a reader of a run's topics sees."""

    predictions: dict[str, bytes]  # transaction id -> prediction without latency_ms
    dead_letters: Counter[tuple[str, str]]  # (input partition, offset) -> copies
    seen_twice: int  # transaction ids seen more than once


def read(bootstrap: str, topics: tuple[str, str], committed: bool = True) -> Outputs:
    config = {
        "bootstrap.servers": bootstrap,
        "isolation.level": "read_committed" if committed else "read_uncommitted",
    }
    preds: dict[str, bytes] = {}
    twice = 0
    for m in messages(config, topics[0], PARTITIONS):
        d = json.loads(m.value())
        assert m.key() == d["user_id"].encode()
        d.pop("latency_ms")
        tid = d["transaction_id"]
        twice += tid in preds
        preds[tid] = json.dumps(d, sort_keys=True).encode()
    dead: Counter[tuple[str, str]] = Counter()
    for m in messages(config, topics[1], PARTITIONS):
        h = headers_dict(m.headers())
        dead[(h["__connect.errors.partition"], h["__connect.errors.offset"])] += 1
    return Outputs(preds, dead, twice)


def assert_exactly_once(got: Outputs, twin: Outputs) -> None:
    assert got.seen_twice == 0, f"{got.seen_twice} transaction ids seen twice"
    assert len(got.predictions) == len(twin.predictions)
    assert got.predictions == twin.predictions
    assert max(got.dead_letters.values()) == 1, "a dead letter seen twice"
    assert got.dead_letters == twin.dead_letters


def run_to_end(dirs: JobDirs, env: dict[str, Any], args: list[str] | None = None) -> str:
    p = start(dirs, args or [], **env)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
    return err.decode()


def start_killer(
    dirs: JobDirs,
    env: dict[str, Any],
    point: str,
    at: int,
    args: list[str] | None = None,
    stderr: Any = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start the job to be SIGKILLed at its `at`-th commit, at `point` (eos_kill_points.py)."""
    dirs.root.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(KILLER), *(args or [])],
        env=dirs.env(**env, EOS_KILL_POINT=point, EOS_KILL_AT_COMMIT=at),
        cwd=dirs.root,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def committed_count(bootstrap: str, topic: str) -> int:
    return sum(1 for _ in messages({"bootstrap.servers": bootstrap}, topic, PARTITIONS))


def wait_for_commits(bootstrap: str, topic: str, p: subprocess.Popen[bytes], least: int) -> None:
    deadline = time.monotonic() + 120
    while committed_count(bootstrap, topic) < least:
        assert p.poll() is None, "the job ended before it had committed enough"
        assert time.monotonic() < deadline, "nothing committed within 120 s"
        time.sleep(0.1)


def input_topics(bootstrap: str, events: int) -> Topics:
    """A fresh input topic holding `inputs(events)`."""
    t = Topics(bootstrap, f"eos-{uuid.uuid4().hex[:8]}")
    admin = admin_client({"bootstrap.servers": t.bootstrap})
    create_job_topics(
        admin, PARTITIONS, t.transactions, f"{t.prefix}-p", f"{t.prefix}-d", 8 * 1024 * 1024
    )
    config = kafka_connection(load_settings(kafka_bootstrap_servers=t.bootstrap)).producer()
    msgs = inputs(events)
    assert produce(config, t.transactions, PARTITIONS, msgs).delivered == len(msgs)
    return t


def twin_of(topics: Topics, events: int, root: Path) -> Outputs:
    """The clean twin: one uninterrupted exactly-once run over the topics' input."""
    run_to_end(JobDirs(root), topics.env("twin"))
    out = read(topics.bootstrap, topics.outputs("twin"))
    assert out.seen_twice == 0 and len(out.predictions) == events
    assert sum(out.dead_letters.values()) == len(range(0, events, BAD_EVERY))
    return out


def kill_and_resume(
    topics: Topics,
    dirs: JobDirs,
    env: dict[str, Any],
    injected: list[tuple[str, int]],
    random_kills: int,
    seed: int,
) -> int:
    """Kill at the injected points, then `random_kills` times at random; finish. Random hits."""
    for point, at in injected:
        p = start_killer(dirs, env, point, at)
        _, err = p.communicate(timeout=300)
        assert p.returncode == -signal.SIGKILL, f"{point} did not kill: {err.decode()[-2000:]}"
    rng = random.Random(seed)
    hits = 0
    preds = env["FRAUD_TOPIC_PREDICTIONS"]
    for _ in range(random_kills):
        p = start(dirs, [], **env)
        wait_for_commits(topics.bootstrap, preds, p, 1)
        time.sleep(rng.uniform(0.2, 2.0))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            hits += 1
        p.communicate(timeout=60)
    run_to_end(dirs, env)
    return hits


@pytest.fixture(scope="module")
def topics(kafka_broker: Broker) -> Topics:
    return input_topics(kafka_broker.bootstrap_servers, EVENTS)


@pytest.fixture(scope="module")
def twin(topics: Topics, tmp_path_factory: pytest.TempPathFactory) -> Outputs:
    return twin_of(topics, EVENTS, tmp_path_factory.mktemp("twin"))


def test_kills_at_injected_points_and_at_random_write_everything_once(
    topics: Topics, twin: Outputs, tmp_path: Path
) -> None:
    """Two kills between produce and commit, one between commit and snapshot, three at random."""
    env = topics.env("kills")
    injected = [("before-commit", 3), ("after-commit", 4), ("before-commit", 6)]
    hits = kill_and_resume(topics, JobDirs(tmp_path), env, injected, 3, SEED)
    got = read(topics.bootstrap, topics.outputs("kills"))
    assert_exactly_once(got, twin)
    # The transactions the kills left open were aborted: a read_uncommitted reader sees
    # their records as well, duplicates of what was written again and committed.
    raw = read(topics.bootstrap, topics.outputs("kills"), committed=False)
    assert raw.seen_twice > 0
    print(f"\nkills: 3 injected + {hits}/3 random hit; read_uncommitted saw {raw.seen_twice} dups")


def test_background_commits_with_kills_write_everything_once(
    topics: Topics, twin: Outputs, tmp_path: Path
) -> None:
    """FRAUD_KAFKA_COMMIT_INTERVAL: commits between snapshots, killed around them and at random.

    The committed progress is then ahead of Bytewax's snapshot when a kill comes
    after a background commit: the resume replays outputs that are committed
    already, and must skip them.
    """
    env = topics.env("interval", FRAUD_KAFKA_COMMIT_INTERVAL="0.2", FRAUD_SNAPSHOT_INTERVAL="2")
    injected = [("after-commit", 3), ("before-commit", 5), ("after-commit", 9)]
    hits = kill_and_resume(topics, JobDirs(tmp_path), env, injected, 3, SEED + 2)
    assert_exactly_once(read(topics.bootstrap, topics.outputs("interval")), twin)
    print(f"\ninterval: 3 injected + {hits}/3 random kills")


def test_a_stale_process_is_fenced_and_writes_nothing_visible(
    topics: Topics, twin: Outputs, tmp_path: Path
) -> None:
    env = topics.env("stale")
    old_dirs, new_dirs = JobDirs(tmp_path / "old"), JobDirs(tmp_path / "new")
    # The old process never ends its input and commits every 20 s: it is stopped inside
    # its first transaction, once that has written records (no background commits).
    old_env = {
        **env,
        "FRAUD_SNAPSHOT_INTERVAL": "20",
        "FRAUD_KAFKA_COMMIT_INTERVAL": "0",
        "FRAUD_KAFKA_STOP_AT_END": "0",
    }
    old = start(old_dirs, [], **old_env)
    preds = topics.outputs("stale")[0]
    deadline = time.monotonic() + 120
    uncommitted = {"bootstrap.servers": topics.bootstrap, "isolation.level": "read_uncommitted"}
    while not any(True for _ in messages(uncommitted, preds, PARTITIONS)):
        assert old.poll() is None and time.monotonic() < deadline, "the old process wrote nothing"
        time.sleep(0.1)
    old.send_signal(signal.SIGSTOP)
    try:
        assert committed_count(topics.bootstrap, preds) == 0
        # A replacement on another host: a copy of the state and recovery directories.
        shutil.copytree(old_dirs.root, new_dirs.root)
        run_to_end(new_dirs, env)
    finally:
        old.send_signal(signal.SIGCONT)
    _, err = old.communicate(timeout=120)
    ours = [ln for ln in err.decode().splitlines() if not ln.startswith("%")]  # librdkafka's log
    lines = [ln for ln in ours if ln.startswith("error:")]
    assert old.returncode not in (0, -signal.SIGKILL), "\n".join(ours)[-3000:]
    assert len(lines) == 1 and "KafkaFenced" in lines[0], ("\n".join(ours)[-3000:], old.returncode)
    assert_exactly_once(read(topics.bootstrap, topics.outputs("stale")), twin)


def test_rescale_one_worker_two_processes_one_worker_with_kills(
    topics: Topics, twin: Outputs, tmp_path: Path
) -> None:
    """Killed between produce and commit with 1 worker, then after a commit with 2 processes."""
    from test_cluster import addresses

    env = topics.env("rescale")
    dirs = JobDirs(tmp_path)
    one = start_killer(dirs, env, "before-commit", 2)
    _, err = one.communicate(timeout=300)
    assert one.returncode == -signal.SIGKILL, err.decode()[-2000:]
    # Each process counts its own commits: whichever reaches its 3rd first dies, and its
    # peer then stops too (Bytewax's cluster link panics) or is killed here.
    addrs, logs = addresses(2), [tmp_path / f"process-{i}.log" for i in (0, 1)]
    two = []
    for i, log in enumerate(logs):
        with log.open("wb") as err:
            two.append(start_killer(dirs, env, "after-commit", 3, ["-i", str(i), "-a", addrs], err))
    deadline = time.monotonic() + 300
    while not (ended := [p for p in two if p.poll() is not None]):
        assert time.monotonic() < deadline, "neither process reached its 3rd commit in 300 s"
        time.sleep(0.02)
    for p in two:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
    errs = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
    assert any(p.returncode == -signal.SIGKILL for p in ended), errs
    run_to_end(dirs, env)
    assert_exactly_once(read(topics.bootstrap, topics.outputs("rescale")), twin)


def test_broker_restart_mid_run_writes_everything_once(
    kafka_broker: Broker, topics: Topics, twin: Outputs, tmp_path: Path
) -> None:
    """The broker stops (its log dir kept) after the first commit and comes back 3 s later."""
    if not kafka_broker.restartable:
        pytest.skip("restarts the session's own broker; KAFKA_BOOTSTRAP_SERVERS names another")
    env = topics.env("restart")
    dirs = JobDirs(tmp_path)
    preds = topics.outputs("restart")[0]
    p = start(dirs, [], **env)
    wait_for_commits(topics.bootstrap, preds, p, 1)
    kafka_broker.stop()
    time.sleep(3)
    kafka_broker.start()
    _, err = p.communicate(timeout=300)
    if p.returncode != 0:  # it may stop with a named error; a resume then finishes
        lines = [ln for ln in err.decode().splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and "Kafka" in lines[0], err.decode()[-3000:]
        run_to_end(dirs, env)
    assert_exactly_once(read(topics.bootstrap, topics.outputs("restart")), twin)
    print(f"\nbroker restart: the job {'waited' if p.returncode == 0 else 'stopped, resumed'}")


@pytest.mark.slow
def test_soak_kills_in_200k_events_write_everything_once(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    """Two injected and six random kills over 200k events (and 400 dead letters)."""
    events = 200_000
    soak = input_topics(kafka_broker.bootstrap_servers, events)
    twin = twin_of(soak, events, tmp_path / "twin")
    env = soak.env("soak")
    injected = [("before-commit", 5), ("after-commit", 9)]
    hits = kill_and_resume(soak, JobDirs(tmp_path / "soak"), env, injected, 6, SEED + 1)
    assert hits >= 4
    assert_exactly_once(read(soak.bootstrap, soak.outputs("soak")), twin)
    print(f"\nsoak: 2 injected + {hits}/6 random kills in {events:,} events")
