"""Recovery-replay on Kafka: SIGKILL the job at random points, resume, compare with a clean run.

The job runs as real processes (`python -m bytewax_fraud`) reading a 4-partition
`transactions` topic (keyed by user id, murmur2) and writing each run's
predictions to its own topic. Kafka output is at-least-once: after a crash the
predictions since the last snapshot are produced again, read back from the
outbox byte for byte, so de-duplicating by transaction id must give exactly the
clean run's predictions, and every duplicate must be an identical copy.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from kafka_broker import Broker
from recovery_harness import JobDirs, live_records, run, run_with_kills

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, create_topic
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

EVENTS = 200_000
USERS = 20_000
SEED = 5
PARTITIONS = 4
TTL = 3 * 86400.0
MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass
class Topics:
    """The input topic shared by every run of the module, and the broker it lives on."""

    bootstrap: str
    transactions: str
    prefix: str

    def outputs(self, run_name: str) -> tuple[str, str]:
        """Create (predictions, dead-letters) topics of one run; returns their names."""
        admin = admin_client({"bootstrap.servers": self.bootstrap})
        names = (f"{self.prefix}-{run_name}-predictions", f"{self.prefix}-{run_name}-dead-letters")
        for t in names:
            create_topic(
                admin, t, PARTITIONS, config={"max.message.bytes": str(MAX_MESSAGE_BYTES + 65_536)}
            )
        return names

    def env(self, predictions: str, dead_letters: str) -> dict[str, Any]:
        """FRAUD_* settings of one run against these topics."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "FRAUD_TOPIC_TRANSACTIONS": self.transactions,
            "FRAUD_TOPIC_PREDICTIONS": predictions,
            "FRAUD_TOPIC_DEAD_LETTERS": dead_letters,
            # Never picks up a control topic another test created on the shared broker.
            "FRAUD_TOPIC_CONTROL": f"{self.prefix}-no-control",
            "FRAUD_KAFKA_STOP_AT_END": "1",
            "FRAUD_PARTITIONS": PARTITIONS,
            "FRAUD_STATE_TTL": "3d",
            "FRAUD_SWEEP_INTERVAL": "0.2",
        }


def read_to_eof(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every message of `topic`: each partition read from the beginning to EOF.

    tansu's high watermark can lag the true end, so the end is the partition EOF
    event of every partition, never a lag figure.
    """
    return [
        (m.key(), m.value() or b"")
        for m in messages({"bootstrap.servers": bootstrap}, topic, PARTITIONS)
    ]


class TopicOutputs:
    """Distinct transaction ids in a predictions topic so far, read on as it grows.

    Each count reads every partition up to the high watermark the broker gives at
    that moment, keeping its position for the next count.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kill-proof"})
        self._parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        self._consumer.assign(
            [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)]
        )
        self._ids: set[str] = set()

    def count(self) -> int:
        ends = [self._consumer.get_watermark_offsets(tp, timeout=30)[1] for tp in self._parts]
        deadline = time.monotonic() + 60
        while any(
            end > 0 and pos.offset < end  # before the first fetch, the position is negative
            for pos, end in zip(self._consumer.position(self._parts), ends, strict=True)
        ):
            assert time.monotonic() < deadline, "the predictions topic could not be read to its end"
            for m in self._consumer.consume(1000, 0.1):
                if m.error() is None:
                    self._ids.add(json.loads(m.value() or b"{}")["transaction_id"])
        return len(self._ids)

    def close(self) -> None:
        self._consumer.close()


def by_transaction(msgs: list[tuple[bytes | None, bytes]]) -> tuple[dict[str, str], int]:
    """Predictions by transaction id without latency_ms, and the number of duplicate messages.

    Every duplicate must be byte-identical to the first copy (latency included):
    replays come from the outbox, never from a second scoring.
    """
    raw: dict[str, bytes] = {}
    dups = 0
    for key, value in msgs:
        d = json.loads(value)
        assert key == d["user_id"].encode(), (key, value)
        tid = d["transaction_id"]
        if tid in raw:
            dups += 1
            assert raw[tid] == value, f"duplicate differs:\n{raw[tid]!r}\n{value!r}"
        else:
            raw[tid] = value
    out: dict[str, str] = {}
    for tid, value in raw.items():
        d = json.loads(value)
        d.pop("latency_ms")
        out[tid] = json.dumps(d, sort_keys=True)
    return out, dups


@pytest.fixture(scope="module")
def topics(kafka_broker: Broker) -> Topics:
    """A fresh input topic holding EVENTS generated events keyed by user id (murmur2)."""
    prefix = f"rk-{uuid.uuid4().hex[:8]}"
    t = Topics(kafka_broker.bootstrap_servers, f"{prefix}-transactions", prefix)
    admin = admin_client({"bootstrap.servers": t.bootstrap})
    create_job_topics(
        admin,
        PARTITIONS,
        t.transactions,
        f"{prefix}-predictions",
        f"{prefix}-dead-letters",
        MAX_MESSAGE_BYTES,
    )
    # The job's own producer settings: Kafka's default murmur2 partitioner, acks=all.
    config = kafka_connection(load_settings(kafka_bootstrap_servers=t.bootstrap)).producer()
    check = produce(config, t.transactions, PARTITIONS, generated(USERS, SEED, EVENTS))
    assert check.delivered == EVENTS and check.misplaced == 0
    return t


@dataclass
class CleanRun:
    dirs: JobDirs
    predictions: dict[str, str]
    seconds: float


@pytest.fixture(scope="module")
def clean(topics: Topics, tmp_path_factory: pytest.TempPathFactory) -> CleanRun:
    """One uninterrupted run, the reference for the crash runs."""
    dirs = JobDirs(tmp_path_factory.mktemp("kafka-clean"))
    preds_topic, dead_topic = topics.outputs("clean")
    t0 = time.monotonic()
    run(dirs, **topics.env(preds_topic, dead_topic))
    seconds = time.monotonic() - t0
    msgs = read_to_eof(topics.bootstrap, preds_topic)
    assert len(msgs) == EVENTS  # one message per transaction, none twice
    preds, dups = by_transaction(msgs)
    assert dups == 0 and len(preds) == EVENTS
    produced = {json.loads(v)["transaction_id"] for _, v in generated(USERS, SEED, EVENTS)}
    assert set(preds) == produced
    assert read_to_eof(topics.bootstrap, dead_topic) == []
    return CleanRun(dirs, preds, seconds)


def crash_and_compare(
    topics: Topics,
    clean: CleanRun,
    tmp_path: Path,
    name: str,
    kills: int,
    seed: int,
    window: tuple[float, float],
) -> tuple[int, int]:
    """Run with `kills` SIGKILLs and resumes; assert it equals the clean run. (hits, dups)."""
    dirs = JobDirs(tmp_path)
    preds_topic, dead_topic = topics.outputs(name)
    outputs = TopicOutputs(topics.bootstrap, preds_topic)
    try:
        hits = run_with_kills(
            dirs,
            kills,
            random.Random(seed),
            clean_outputs=EVENTS,
            outputs=outputs,
            window=window,
            **topics.env(preds_topic, dead_topic),
        )
    finally:
        outputs.close()
    msgs = read_to_eof(topics.bootstrap, preds_topic)
    got, dups = by_transaction(msgs)
    assert len(got) == EVENTS
    assert got == clean.predictions
    assert read_to_eof(topics.bootstrap, dead_topic) == []
    assert live_records(dirs.state, TTL) == live_records(clean.dirs.state, TTL)
    print(
        f"\n{name}: {hits}/{kills} kills hit a running job; {len(msgs)} messages,"
        f" {dups} identical duplicates; clean run {clean.seconds:.1f} s"
    )
    return hits, dups


@pytest.mark.kafka
def test_random_kills_on_kafka_lose_nothing_and_apply_nothing_twice(
    topics: Topics, clean: CleanRun, tmp_path: Path
) -> None:
    # Kill somewhere between startup and the end of a clean run's work.
    window = (1.5, max(3.0, 0.6 * clean.seconds))
    hits, _ = crash_and_compare(topics, clean, tmp_path, "kills", 3, 11, window)
    assert hits == 3


@pytest.mark.slow
@pytest.mark.kafka
def test_soak_twelve_random_kills_on_kafka(topics: Topics, clean: CleanRun, tmp_path: Path) -> None:
    # Short runs: twelve kills must not finish the work before the last of them.
    window = (1.0, 2.5)
    hits, _ = crash_and_compare(topics, clean, tmp_path, "soak", 12, 7, window)
    assert hits == 12


def test_duplicate_check_catches_a_differing_copy() -> None:
    line = b'{"transaction_id":"t","user_id":"u","latency_ms":1.0}'
    other = b'{"transaction_id":"t","user_id":"u","latency_ms":2.0}'
    assert by_transaction([(b"u", line), (b"u", bytes(line))])[1] == 1
    with pytest.raises(AssertionError, match="duplicate differs"):
        by_transaction([(b"u", line), (b"u", other)])
