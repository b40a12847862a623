"""The prediction sink produces without waiting, and a snapshot waits for every delivery.

At-least-once rests on this: once an epoch's snapshot completes, its input offsets
are the resume point and nothing replays the outputs before them. So a snapshot must
not complete while one of those outputs is undelivered: it waits for the broker, or
the run fails with the named error.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import numpy as np
import pytest
from kafka_broker import Broker

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_topic
from bytewax_fraud.connectors.kafka.errors import KafkaBrokersGone
from bytewax_fraud.connectors.kafka.sinks import KafkaPredictionSink
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.records import ScoredBatch
from bytewax_fraud.settings import load_settings
from bytewax_fraud.status import STATS
from bytewax_fraud.tools.tail import messages


def scored(n: int, tag: str) -> ScoredBatch:
    users = [f"u{i % 7}" for i in range(n)]
    lines = [f'{{"transaction_id":"{tag}-{i}"}}'.encode() for i in range(n)]
    z = np.zeros(n)
    return ScoredBatch(users, lines, z, z, z.astype(np.int64) - 1, 0, 0)


def prediction_part(properties: dict[str, Any], topic: str) -> Any:
    s = load_settings(kafka_bootstrap_servers=properties.pop("bootstrap.servers"))
    config = {**kafka_connection(s).producer(), **properties}
    sink = KafkaPredictionSink(topic, config, partitions=2)
    parts = sink.list_parts()
    assert parts == sorted(routing_key(p) for p in range(2))
    assert sink.part_fn(routing_key(1)) == parts.index(routing_key(1))
    return sink.build_part("out", parts[0], None)


def test_undelivered_predictions_fail_the_snapshot_not_the_batch() -> None:
    # Nothing listens on port 1: no message can be delivered. The batch is handed over
    # without waiting; the snapshot is where the guarantee is checked, and it fails.
    part = prediction_part(
        {"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 300, "log_level": 0}, "p"
    )
    before = STATS.delivery_failures
    part.write_batch([scored(5, "a")])  # no broker round trip: returns, nothing raised
    with pytest.raises(KafkaBrokersGone, match="5 message.*not delivered"):
        part.snapshot()
    assert STATS.delivery_failures == before + 5
    part.close()  # after the failure: gives up quickly, raises nothing more


@pytest.mark.kafka
def test_a_snapshot_waits_while_the_broker_is_paused_and_nothing_is_lost(
    own_broker: Broker,
) -> None:
    topic = f"async-{uuid.uuid4().hex[:8]}"
    create_topic(admin_client({"bootstrap.servers": own_broker.bootstrap_servers}), topic, 2)
    part = prediction_part({"bootstrap.servers": own_broker.bootstrap_servers}, topic)
    part.write_batch([scored(100, "before")])
    part.snapshot()  # delivered: the broker is up
    own_broker.pause()
    snapshot_done = threading.Event()
    errors: list[BaseException] = []

    def snapshot() -> None:
        try:
            part.snapshot()
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        snapshot_done.set()

    try:
        part.write_batch([scored(300, "paused")])  # handed over while nothing can be acked
        waiter = threading.Thread(target=snapshot)
        waiter.start()
        # The snapshot must still be waiting: its predictions cannot have been acknowledged.
        assert not snapshot_done.wait(3.0), "a snapshot completed with undelivered predictions"
    finally:
        own_broker.resume()
    assert snapshot_done.wait(120.0), "the snapshot did not complete after the broker came back"
    assert errors == []
    part.close()
    s = load_settings(kafka_bootstrap_servers=own_broker.bootstrap_servers)
    got = [m.value() or b"" for m in messages(kafka_connection(s).consumer("earliest"), topic, 2)]
    want = scored(100, "before").lines + scored(300, "paused").lines
    assert sorted(got) == sorted(want)  # each once, none lost
