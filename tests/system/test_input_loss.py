"""Input that vanished under the job: a named error (or, if asked, a counted skip), never silence.

Against the real broker (Apache Kafka): some tests delete and re-create the
input topic, which is what an operator's "reset" of a topic does; the retention
case (offset below the earliest one) deletes records with DeleteRecords, as
retention would. Its decision logic is also checked directly below.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient
from kafka_broker import Broker
from recovery_harness import JobDirs, start

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import (
    admin_client,
    create_job_topics,
    create_topic,
    partition_count,
)
from bytewax_fraud.connectors.kafka.continuity import check_topic_identity, resume_offset
from bytewax_fraud.connectors.kafka.errors import InputDataLost, KafkaSetupError
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.produce import generated, produce

PARTITIONS = 4
EVENTS = 4_000


# --- the decision (pure) ----------------------------------------------------------------------


def test_offset_below_the_earliest_fails_naming_the_gap_and_the_fix() -> None:
    with pytest.raises(InputDataLost) as err:
        resume_offset("tx", 2, 100, 160, 500, "fail")
    msg = str(err.value)
    assert "topic 'tx' partition 2" in msg and "offset 100" in msg and "is 160" in msg
    assert "60 message(s) were deleted" in msg and "FRAUD_ON_DATA_LOSS=skip" in msg


def test_skip_continues_at_the_earliest_offset_and_reports_the_gap() -> None:
    offset, gap = resume_offset("tx", 2, 100, 160, 500, "skip")
    assert offset == 160 and gap is not None and gap.lost == 60
    assert resume_offset("tx", 2, 160, 160, 500, "fail") == (160, None)  # nothing lost
    assert resume_offset("tx", 2, 500, 0, 500, "fail") == (500, None)  # at the end: waits


def test_offset_past_the_end_always_fails() -> None:
    for policy in ("fail", "skip"):
        with pytest.raises(InputDataLost, match="ends at offset 40: the topic was truncated"):
            resume_offset("tx", 0, 90, 0, 40, policy)  # type: ignore[arg-type]
    assert resume_offset("tx", 0, 90, 0, None, "fail") == (90, None)  # end not trusted


def test_topic_identity_is_recorded_then_checked(tmp_path: Path) -> None:
    check_topic_identity(tmp_path, "tx", None)  # a broker without topic ids: no check
    assert not (tmp_path / "input-topics.json").exists()
    check_topic_identity(tmp_path, "tx", "id-1")
    check_topic_identity(tmp_path, "tx", "id-1")
    check_topic_identity(tmp_path, "other", "id-9")
    with pytest.raises(InputDataLost, match=r"deleted and re-created .* id-1, now id-2"):
        check_topic_identity(tmp_path, "tx", "id-2")


# --- against the broker -----------------------------------------------------------------------


def _topics(
    bootstrap: str, prefix: str, partitions: int = PARTITIONS, events: int = EVENTS
) -> None:
    admin = admin_client({"bootstrap.servers": bootstrap})
    create_job_topics(
        admin, partitions, f"{prefix}-tx", f"{prefix}-p", f"{prefix}-d", 8 * 1024 * 1024
    )
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    produce(config, f"{prefix}-tx", partitions, generated(500, 1, EVENTS))


def _env(bootstrap: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FRAUD_TOPIC_TRANSACTIONS": f"{prefix}-tx",
        "FRAUD_TOPIC_PREDICTIONS": f"{prefix}-p",
        "FRAUD_TOPIC_DEAD_LETTERS": f"{prefix}-d",
        "FRAUD_TOPIC_CONTROL": f"{prefix}-no-control",
        "FRAUD_KAFKA_STOP_AT_END": "1",
        "FRAUD_PARTITIONS": PARTITIONS,
        **extra,
    }


def _run(dirs: JobDirs, **env: Any) -> tuple[int, str]:
    p = start(dirs, **env)
    _, err = p.communicate(timeout=300)
    return p.returncode, err.decode()


def _one_error(stderr: str) -> str:
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr[-3000:]
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return line


def _still_listed(admin: AdminClient, topic: str) -> bool:
    try:
        return partition_count(admin, topic) is not None
    except KafkaSetupError:  # listed with an error while it is being deleted
        return True


def _recreate(bootstrap: str, topic: str, partitions: int, events: int) -> None:
    admin = admin_client({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(30)
    # The deletion is accepted before the metadata stops listing the topic. Created while it
    # is still listed, `create_topic` finds it and does nothing; the producer's first request
    # then auto-creates it with the broker's default of 1 partition (still listed right after
    # its deletion in 1 of 30 tries on an idle broker).
    deadline = time.monotonic() + 30
    while _still_listed(admin, topic):
        assert time.monotonic() < deadline, f"{topic} still listed 30 s after its deletion"
        time.sleep(0.05)
    assert create_topic(admin, topic, partitions)
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    produce(config, topic, partitions, generated(500, 2, events))


@pytest.mark.kafka
def test_recreated_input_topic_is_a_named_error_on_resume(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    prefix = f"gone-{uuid.uuid4().hex[:6]}"
    _topics(bootstrap, prefix)
    dirs = JobDirs(tmp_path)
    rc, err = _run(dirs, **_env(bootstrap, prefix))
    assert rc == 0, err[-3000:]
    # The topic is reset behind the job's back: fewer messages, offsets from 0 again.
    _recreate(bootstrap, f"{prefix}-tx", PARTITIONS, 400)
    for policy in ("fail", "skip"):  # skipping cannot make a re-created topic safe
        rc, err = _run(dirs, **_env(bootstrap, prefix, FRAUD_ON_DATA_LOSS=policy))
        assert rc == 2, err[-3000:]
        line = _one_error(err)
        assert line.startswith("error: InputDataLost: input topic") and "re-created" in line
        assert "Fix: start over with new (empty) FRAUD_STATE_DIR and FRAUD_RECOVERY_DIR" in line
    print(f"\n{line}")


@pytest.mark.kafka
def test_changed_partition_count_on_resume_stays_a_named_error(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    prefix = f"parts-{uuid.uuid4().hex[:6]}"
    _topics(bootstrap, prefix)
    dirs = JobDirs(tmp_path)
    assert _run(dirs, **_env(bootstrap, prefix))[0] == 0
    _recreate(bootstrap, f"{prefix}-tx", 2, 400)
    rc, err = _run(dirs, **_env(bootstrap, prefix))
    assert rc == 2
    line = _one_error(err)
    assert (
        "KafkaSetupError: input topic" in line and "has 2 partitions but FRAUD_PARTITIONS=4" in line
    )


@pytest.mark.kafka
def test_retention_gap_fails_or_is_skipped_and_counted(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = kafka_broker.bootstrap_servers
    prefix = f"ret-{uuid.uuid4().hex[:6]}"
    _topics(bootstrap, prefix)
    dirs = JobDirs(tmp_path)
    assert _run(dirs, **_env(bootstrap, prefix))[0] == 0
    # More input arrives, and retention deletes part of it before the job reads it.
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    produce(config, f"{prefix}-tx", PARTITIONS, generated(500, 3, 2_000))
    admin = admin_client({"bootstrap.servers": bootstrap})
    tp = TopicPartition(f"{prefix}-tx", 0)
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    low, high = c.get_watermark_offsets(tp, 10)
    c.close()
    cut = high - 100
    admin.delete_records([TopicPartition(tp.topic, 0, cut)])[tp].result(30)  # type: ignore[index]
    rc, err = _run(dirs, **_env(bootstrap, prefix))
    assert rc == 2 and "InputDataLost" in _one_error(err) and "partition 0" in err
    rc, err = _run(dirs, **_env(bootstrap, prefix, FRAUD_ON_DATA_LOSS="skip"))
    assert rc == 0, err[-3000:]
    assert "continuing at offset" in err and "input lost" in err
