"""The exactly-once sink's pure parts: committed progress as a group offset, partition routing."""

from __future__ import annotations

from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from bytewax_fraud.connectors import make_outputs
from bytewax_fraud.connectors.kafka.transactional import KafkaTransactionalSink, Progress
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.settings import load_settings


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
