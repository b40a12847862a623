"""The exactly-once sink: committed progress as a group offset, routing, a worker's commits."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka_broker import Broker

from bytewax_fraud.connectors import kafka_connection, make_outputs
from bytewax_fraud.connectors.kafka.admin import admin_client, create_topic
from bytewax_fraud.connectors.kafka.config import KafkaConnection
from bytewax_fraud.connectors.kafka.errors import KafkaFenced
from bytewax_fraud.connectors.kafka.transactional import KafkaTransactionalSink, Progress
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.records import ScoredBatch
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.tail import messages


def test_progress_round_trips_through_a_group_offset() -> None:
    p = Progress({"tx": 41, "model-control": 3})
    tp = p.to_offset("tx", 2)
    assert (tp.topic, tp.partition, tp.offset) == ("tx", 2, 42)  # the next offset, Kafka's way
    assert Progress.from_offset(tp) == p


def test_nothing_committed_covers_nothing() -> None:
    p = Progress.from_offset(TopicPartition("tx", 0, -1001))  # OFFSET_INVALID: no commit yet
    assert p.offsets == {}
    assert not p.covers("tx", 0)


def test_progress_covers_offsets_at_or_below_it_per_source() -> None:
    p = Progress({"tx": 10})
    assert p.covers("tx", 10) and p.covers("tx", 0)
    assert not p.covers("tx", 11)
    assert not p.covers("model-control", 0)


def test_each_state_partition_has_its_own_sink_partition_in_order() -> None:
    sink = KafkaTransactionalSink(12, ("tx", "p", "d"), {}, {}, "job")
    parts = sink.list_parts()
    assert parts == sorted(parts)  # Bytewax indexes the sorted names
    for p in range(12):
        assert parts[sink.part_fn(routing_key(p))] == parts[p]


def test_exactly_once_without_kafka_fails_at_start_naming_the_fix(tmp_path: Path) -> None:
    s = load_settings(kafka_delivery="exactly-once", output_dir=tmp_path)
    with pytest.raises(SettingsError, match="needs Kafka output .* unset FRAUD_KAFKA_DELIVERY"):
        make_outputs(s, fresh=True)


def _scored(tag: str, offsets: range) -> ScoredBatch:
    n = len(offsets)
    z = np.zeros(n)
    lines = [f'{{"transaction_id":"{tag}-{o}"}}'.encode() for o in offsets]
    users = [f"u{o % 7}" for o in offsets]
    return ScoredBatch(
        users, lines, z, z, z.astype(np.int64) - 1, 0, 0, offsets=np.asarray(offsets, np.int64)
    )


def _fresh_topics(
    broker: Broker, name: str, partitions: int
) -> tuple[str, tuple[str, str, str], KafkaConnection]:
    """A prefix, its three topics (input, predictions, dead letters) and a connection."""
    prefix = f"{name}-{uuid.uuid4().hex[:8]}"
    topics = (f"{prefix}-tx", f"{prefix}-p", f"{prefix}-d")
    admin = admin_client({"bootstrap.servers": broker.bootstrap_servers})
    for t in topics:
        create_topic(admin, t, partitions)
    conn = kafka_connection(load_settings(kafka_bootstrap_servers=broker.bootstrap_servers))
    return prefix, topics, conn


@pytest.mark.kafka
def test_the_first_snapshot_of_an_epoch_commits_every_open_transaction_of_the_worker(
    kafka_broker: Broker,
) -> None:
    # Bytewax snapshots a worker's sink partitions one after another once the epoch is
    # closed; the first commits all of them at once (CommitGroup), the others find theirs
    # committed. Each partition's progress is its own group offset.
    prefix, topics, conn = _fresh_topics(kafka_broker, "group", 3)
    sink = KafkaTransactionalSink(3, topics, conn.producer(), conn.consumer(), prefix)
    parts = [sink.build_part("out", name, None) for name in sink.list_parts()]
    for p, part in enumerate(parts):
        part.write_batch([_scored(f"p{p}", range(10 * p, 10 * p + 10))])
    assert all(part.is_open for part in parts)
    parts[0].snapshot()
    assert not any(part.is_open for part in parts)  # all three committed by the first
    for part in parts[1:]:
        part.snapshot()  # nothing left to commit
    reader = Consumer({**conn.consumer(), "group.id": prefix})
    got = reader.committed([TopicPartition(topics[0], p) for p in range(3)], 30)
    reader.close()
    assert [tp.offset for tp in got] == [10, 20, 30]  # the next input offset of each
    read_committed = {**conn.consumer("earliest"), "isolation.level": "read_committed"}
    lines = sorted(m.value() or b"" for m in messages(read_committed, topics[1], 3))
    want = [line for p in range(3) for line in _scored(f"p{p}", range(10 * p, 10 * p + 10)).lines]
    assert lines == sorted(want)
    for part in parts:
        part.close()


def _committed_lines(conn_config: dict[str, object], topic: str) -> list[bytes]:
    read_committed = {**conn_config, "isolation.level": "read_committed"}
    return sorted(m.value() or b"" for m in messages(read_committed, topic, 1))


@pytest.mark.kafka
def test_a_commit_interval_commits_in_the_background_between_snapshots(
    kafka_broker: Broker,
) -> None:
    # FRAUD_KAFKA_COMMIT_INTERVAL: a transaction open that long is committed by a thread
    # of its own, whether or not the worker writes again; what the worker writes while a
    # commit runs waits for the next transaction. Readers see outputs without any
    # snapshot; the snapshot then commits the rest, and each line is there once.
    prefix, topics, conn = _fresh_topics(kafka_broker, "interval", 1)
    sink = KafkaTransactionalSink(1, topics, conn.producer(), conn.consumer(), prefix, 0.1)
    (part,) = [sink.build_part("out", name, None) for name in sink.list_parts()]
    first = _scored("a", range(0, 10))
    part.write_batch([first])  # and nothing more: the input pauses
    deadline = time.monotonic() + 30
    while (got := _committed_lines(conn.consumer("earliest"), topics[1])) != sorted(first.lines):
        assert time.monotonic() < deadline, f"not committed in the background: {len(got)} lines"
        time.sleep(0.05)
    assert part.is_open is False
    later = [_scored("a", range(10 + 5 * i, 15 + 5 * i)) for i in range(60)]
    for batch in later:  # 0.6 s of writes: some while a commit runs
        part.write_batch([batch])
        time.sleep(0.01)
    time.sleep(0.5)
    got = _committed_lines(conn.consumer("earliest"), topics[1])
    assert len(got) > len(first.lines), "nothing written later was committed before the snapshot"
    part.snapshot()
    assert not part.is_open
    every = sorted([*first.lines, *(line for b in later for line in b.lines)])
    assert _committed_lines(conn.consumer("earliest"), topics[1]) == every
    reader = Consumer({**conn.consumer(), "group.id": prefix})
    (tp,) = reader.committed([TopicPartition(topics[0], 0)], 30)
    reader.close()
    assert tp.offset == 310  # the next input offset after all of it
    part.close()


@pytest.mark.kafka
def test_a_background_commit_that_is_fenced_stops_the_next_write(kafka_broker: Broker) -> None:
    # Another process takes the transactional.id over: the old one's next background
    # commit fails, and its worker's next write raises the one-line KafkaFenced (the worker
    # never waited for that commit). Nothing the old one wrote after the takeover is
    # visible (its first transaction may have been committed just before it).
    prefix, topics, conn = _fresh_topics(kafka_broker, "fenced", 1)
    old_sink = KafkaTransactionalSink(1, topics, conn.producer(), conn.consumer(), prefix, 0.5)
    (old,) = [old_sink.build_part("out", name, None) for name in old_sink.list_parts()]
    old.write_batch([_scored("old", range(0, 10))])
    new_sink = KafkaTransactionalSink(1, topics, conn.producer(), conn.consumer(), prefix)
    (new,) = [new_sink.build_part("out", name, None) for name in new_sink.list_parts()]
    deadline = time.monotonic() + 30
    with pytest.raises(KafkaFenced, match="taken over by another process"):
        while time.monotonic() < deadline:  # the ticker commits within 0.5 s, and fails
            old.write_batch([_scored("old", range(10, 11))])
            time.sleep(0.05)
    first = sorted(_scored("old", range(0, 10)).lines)
    before = _committed_lines(conn.consumer("earliest"), topics[1])
    assert before in ([], first)
    new.write_batch([_scored("new", range(10, 13))])  # after what the old one committed
    new.snapshot()
    assert _committed_lines(conn.consumer("earliest"), topics[1]) == sorted(
        [*before, *_scored("new", range(10, 13)).lines]
    )
    new.close()
    old.close()  # after the failure: commits nothing, raises nothing
