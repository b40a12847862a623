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
from bytewax_fraud.state.handover import hand_over
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


def _kafka_job(broker: Broker, name: str, events: list[tuple[bytes | None, bytes]]) -> dict:
    """Fresh job topics named after `name`, `events` produced in; the job's Kafka settings."""
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    bootstrap = broker.bootstrap_servers
    topics = (f"{prefix}-transactions", f"{prefix}-predictions", f"{prefix}-dead-letters")
    create_job_topics(admin_client({"bootstrap.servers": bootstrap}), PARTITIONS, *topics, 1 << 20)
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    check = produce(config, topics[0], PARTITIONS, events)
    assert check.delivered == len(events) and check.misplaced == 0
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FRAUD_TOPIC_TRANSACTIONS": topics[0],
        "FRAUD_TOPIC_PREDICTIONS": topics[1],
        "FRAUD_TOPIC_DEAD_LETTERS": topics[2],
        "FRAUD_TOPIC_CONTROL": f"{prefix}-no-control",
        "FRAUD_KAFKA_STOP_AT_END": 1,
        "FRAUD_PARTITIONS": PARTITIONS,
    }


def _predictions(broker: Broker, env: dict) -> dict[str, str]:
    """The comparable predictions on the job's predictions topic, by transaction id."""
    return dict(
        _comparable(m.value() or b"")
        for m in messages(
            {"bootstrap.servers": broker.bootstrap_servers},
            env["FRAUD_TOPIC_PREDICTIONS"],
            PARTITIONS,
        )
    )


@pytest.mark.kafka
def test_a_file_replay_and_a_kafka_run_give_the_same_predictions(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    env = _kafka_job(kafka_broker, "parity", list(generated(USERS, SEED, EVENTS)))
    run(JobDirs(tmp_path / "kafka"), **env)
    from_kafka = _predictions(kafka_broker, env)

    path = tmp_path / "events.jsonl"
    write_file(path, generated(USERS, SEED, EVENTS))
    files = JobDirs(tmp_path / "file")
    run(files, FRAUD_INPUT=path, FRAUD_PARTITIONS=PARTITIONS)
    from_file = dict(
        _comparable(line) for line in (files.out / "predictions.jsonl").read_bytes().splitlines()
    )
    assert len(from_file) == EVENTS
    assert from_file == from_kafka


@pytest.mark.kafka
def test_a_file_replay_warms_the_state_of_a_kafka_run(kafka_broker: Broker, tmp_path: Path) -> None:
    """History from a file, then live events from Kafka = the whole stream in one replay."""
    events = list(generated(USERS, SEED, EVENTS))
    history, live = events[: EVENTS * 3 // 5], events[EVENTS * 3 // 5 :]
    whole = tmp_path / "whole.jsonl"
    write_file(whole, events)
    reference = JobDirs(tmp_path / "reference")
    run(reference, FRAUD_INPUT=whole, FRAUD_PARTITIONS=PARTITIONS)
    expected = dict(
        _comparable(line)
        for line in (reference.out / "predictions.jsonl").read_bytes().splitlines()
    )

    past = tmp_path / "history.jsonl.gz"
    write_file(past, history)
    warm = JobDirs(tmp_path / "warm")
    run(warm, FRAUD_INPUT=past, FRAUD_PARTITIONS=PARTITIONS)
    live_recovery = tmp_path / "warm" / "recovery-kafka"
    done = hand_over(warm.state, live_recovery, "kafka")
    assert done.partitions == PARTITIONS and done.users > 0 and done.outbox_entries > 0

    env = _kafka_job(kafka_broker, "warm", live)
    run(warm, **env, FRAUD_RECOVERY_DIR=live_recovery)
    got = _predictions(kafka_broker, env)
    assert len(got) == len(live)
    assert got == {tid: expected[tid] for tid in got}
