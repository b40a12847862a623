"""Partition parity: the same events through a file and through Kafka give the same predictions.

A user's events land in the same state partition either way (murmur2 of the
user id), in the same order, so every score must be the same. Only the offset
(a Kafka offset, or a position in the file) and the measured latency differ.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from kafka_broker import Broker
from recovery_harness import JobDirs, run

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.produce import generated, produce, write_file
from bytewax_fraud.tools.tail import messages

EVENTS = 20_000
USERS = 2_000
SEED = 21
PARTITIONS = 4


def _comparable(value: bytes) -> tuple[str, str]:
    d = json.loads(value)
    d.pop("latency_ms")
    d.pop("offset")
    return d["transaction_id"], json.dumps(d, sort_keys=True)


@pytest.mark.kafka
def test_a_file_replay_and_a_kafka_run_give_the_same_predictions(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    prefix = f"parity-{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_broker.bootstrap_servers
    topics = (f"{prefix}-transactions", f"{prefix}-predictions", f"{prefix}-dead-letters")
    create_job_topics(admin_client({"bootstrap.servers": bootstrap}), PARTITIONS, *topics, 1 << 20)
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    check = produce(config, topics[0], PARTITIONS, generated(USERS, SEED, EVENTS))
    assert check.delivered == EVENTS and check.misplaced == 0
    run(
        JobDirs(tmp_path / "kafka"),
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        FRAUD_TOPIC_TRANSACTIONS=topics[0],
        FRAUD_TOPIC_PREDICTIONS=topics[1],
        FRAUD_TOPIC_DEAD_LETTERS=topics[2],
        FRAUD_TOPIC_CONTROL=f"{prefix}-no-control",
        FRAUD_KAFKA_STOP_AT_END=1,
        FRAUD_PARTITIONS=PARTITIONS,
    )
    from_kafka = dict(
        _comparable(m.value() or b"")
        for m in messages({"bootstrap.servers": bootstrap}, topics[1], PARTITIONS)
    )

    path = tmp_path / "events.jsonl"
    write_file(path, generated(USERS, SEED, EVENTS))
    files = JobDirs(tmp_path / "file")
    run(files, FRAUD_INPUT=path, FRAUD_PARTITIONS=PARTITIONS)
    from_file = dict(
        _comparable(line) for line in (files.out / "predictions.jsonl").read_bytes().splitlines()
    )
    assert len(from_file) == EVENTS
    assert from_file == from_kafka
