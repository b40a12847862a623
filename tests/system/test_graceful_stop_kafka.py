"""Graceful stop of the Kafka source: a partition ends where it is and resumes from there."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kafka_broker import Broker

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_topic
from bytewax_fraud.connectors.kafka.source import KafkaTransactionSource
from bytewax_fraud.process import shutdown
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.produce import generated, produce

pytestmark = pytest.mark.kafka

PARTITIONS = 2


@pytest.fixture
def no_stop_request() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()


def test_a_stopped_partition_resumes_at_its_next_offset(
    kafka_broker: Broker, no_stop_request: None
) -> None:
    topic = f"stop-{uuid.uuid4().hex[:8]}"
    s = load_settings(kafka_bootstrap_servers=kafka_broker.bootstrap_servers, partitions=PARTITIONS)
    create_topic(admin_client({"bootstrap.servers": s.kafka_bootstrap_servers}), topic, PARTITIONS)
    produce(kafka_connection(s).producer(), topic, PARTITIONS, generated(100, 1, 3000))

    def source(stop_at_end: bool) -> KafkaTransactionSource:
        config = kafka_connection(s).consumer(s.start)
        return KafkaTransactionSource(
            topic, PARTITIONS, config, stop_at_end=stop_at_end, batch_size=100
        )

    key = source(True).list_parts()[0]
    part = source(False).build_part("in", key, None)
    offsets: list[int] = []
    deadline = time.monotonic() + 60
    while len(offsets) < 300:
        assert time.monotonic() < deadline, f"only {len(offsets)} messages read in 60 s"
        for batch in part.next_batch():
            offsets += batch.offsets.tolist()
    shutdown.request()
    with pytest.raises(StopIteration):
        part.next_batch()
    resume = part.snapshot()
    part.close()
    assert resume == offsets[-1] + 1, "the snapshot is the next offset to read"

    shutdown.reset()
    rest = source(True).build_part("in", key, resume)
    while True:
        try:
            batches = rest.next_batch()
        except StopIteration:
            break
        for batch in batches:
            offsets += batch.offsets.tolist()
    rest.close()
    assert offsets == list(range(len(offsets))) and len(offsets) > 300
