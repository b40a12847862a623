"""The Kafka reader never holds up its worker, even while it asks the broker for watermarks.

A worker reads all its partitions in turn on one thread; a reader that waited
for the broker (up to `WATERMARK_TIMEOUT_S`) would stall every partition of the
worker. The watermark query runs in the background and the reader reads
nothing from its partition until the answer is in.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import pytest
from confluent_kafka import Producer
from kafka_broker import Broker, free_port

from bytewax_fraud.connectors.kafka import source
from bytewax_fraud.connectors.kafka.admin import admin_client, create_topic
from bytewax_fraud.connectors.kafka.source import KafkaPartitionReader
from bytewax_fraud.records import RawBatch

#: Far above what a call that does not wait takes, far below the query's timeout.
PROMPT_S = 2.0


def _timed_reads(reader: KafkaPartitionReader, seconds: float) -> tuple[list[RawBatch], float]:
    """Read for `seconds` as Bytewax does; what came, and the longest single call."""
    got: list[RawBatch] = []
    slowest = 0.0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        got += reader.next_batch()
        slowest = max(slowest, time.monotonic() - t0)
        wake = reader.next_awake()
        time.sleep(0.001 if wake is None else max(wake.timestamp() - time.time(), 0.0))
    return got, slowest


def test_a_resume_check_against_an_unreachable_broker_does_not_block(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(source, "WATERMARK_TIMEOUT_S", 3.0)
    config = {
        "bootstrap.servers": f"127.0.0.1:{free_port()}",  # nothing listens there
        "group.id": "unused",
        "log_level": 0,
        "auto.offset.reset": "error",
    }
    t0 = time.monotonic()
    reader = KafkaPartitionReader("in", config, "t", 0, 0, 42, 100, 0.005)
    try:
        assert time.monotonic() - t0 < PROMPT_S
        got, slowest = _timed_reads(reader, 1.0)
        assert got == [] and slowest < PROMPT_S
        assert reader.snapshot() == 42
        with caplog.at_level(logging.WARNING):
            deadline = time.monotonic() + 30
            while "cannot check resume offset 42" not in caplog.text:
                assert time.monotonic() < deadline, "the watermark query never gave up"
                reader.next_batch()
                time.sleep(0.05)
        assert reader.snapshot() == 42  # unchecked, the position stays where it was
    finally:
        reader.close()


@pytest.mark.kafka
def test_a_paused_broker_holds_up_no_read_and_the_resume_offset_is_kept(
    own_broker: Broker,
) -> None:
    topic = f"src-{uuid.uuid4().hex[:8]}"
    create_topic(admin_client({"bootstrap.servers": own_broker.bootstrap_servers}), topic, 1)
    producer = Producer({"bootstrap.servers": own_broker.bootstrap_servers})
    for i in range(200):
        producer.produce(topic, value=str(i).encode(), partition=0)
    assert producer.flush(30) == 0
    config: dict[str, Any] = {
        "bootstrap.servers": own_broker.bootstrap_servers,
        "group.id": "unused",
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
    }
    own_broker.pause()
    try:
        t0 = time.monotonic()
        reader = KafkaPartitionReader("in", config, topic, 0, 0, 150, 100, 0.005)
        assert time.monotonic() - t0 < PROMPT_S
        got, slowest = _timed_reads(reader, 3.0)
    finally:
        own_broker.resume()
    try:
        assert got == [] and slowest < PROMPT_S
        read: list[bytes | None] = []
        deadline = time.monotonic() + 60
        while True:
            try:
                batches = reader.next_batch()
            except StopIteration:
                break
            read += [v for b in batches for v in b.values]
            assert time.monotonic() < deadline, f"read only {len(read)} messages"
            time.sleep(0.005)
        assert read == [str(i).encode() for i in range(150, 200)]
        assert reader.snapshot() == 200
    finally:
        reader.close()
