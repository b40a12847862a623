"""Operational metrics: lag, event-time lag, snapshot freshness, store size, scores per model.

The collector test pins exact values; the run test checks the scraped values
against what a real run (generator, RocksDB, two ONNX models) wrote; the Kafka
test reads a real broker's high-water mark.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer
from kafka_broker import Broker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bytewax_fraud.admission.event_time import CLOCK_RANK
from bytewax_fraud.connectors.generator_source import GeneratorSource
from bytewax_fraud.connectors.kafka.admin import admin_client, create_topic
from bytewax_fraud.connectors.kafka.source import KafkaPartitionReader
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.settings import load_settings
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.status import SCORE_BUCKETS, STATS, RunStats
from bytewax_fraud.telemetry import StatsCollector

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def collect(stats: RunStats = STATS, now: float | None = None) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats) if now is None else StatsCollector(stats, lambda: now))
    out: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_collector_exports_lag_and_freshness_exactly() -> None:
    stats = RunStats()
    stats.record_input(2, position=100, end=150)
    stats.record_input(3, position=80, end=80)
    stats.record_scored(
        latencies_ms=np.array([1.0, 2.0, 3.0]),
        probabilities=np.array([0.0005, 0.6, 0.3]),
        labels=np.array([-1, -1, -1]),
        replayed=0,
        expired=0,
        partition=2,
        scores={"a@1": np.array([0.0005, 0.6]), "b@2": np.array([0.3])},
    )
    stats.record_event_time(2, 1_000.0, late_accepted=0)
    stats.record_snapshot(2, 0.25, keys=10, disk_bytes=4096)
    snapshot_at = stats.last_snapshot[2][0]
    m = collect(stats, now=snapshot_at + 7.0)

    assert value(m, "fraud_consumer_lag_messages", partition="2") == 50
    assert value(m, "fraud_consumer_lag_messages", partition="3") == 0
    assert value(m, "fraud_input_offset", partition="2") == 100
    assert value(m, "fraud_event_time_watermark_timestamp_seconds", partition="2") == 1_000.0
    assert value(m, "fraud_event_time_lag_seconds", partition="2") == snapshot_at + 7.0 - 1_000.0
    assert value(m, "fraud_snapshot_age_seconds", partition="2") == pytest.approx(7.0)
    assert value(m, "fraud_snapshot_last_duration_seconds", partition="2") == 0.25
    assert value(m, "fraud_state_disk_bytes", partition="2") == 4096
    # One histogram per model: 0.0005 in the first bucket, 0.6 under 0.7, 0.3 under 0.3.
    assert value(m, "fraud_predicted_probability_count", model="a@1") == 2
    assert value(m, "fraud_predicted_probability_sum", model="a@1") == pytest.approx(0.6005)
    assert value(m, "fraud_predicted_probability_bucket", model="a@1", le="0.001") == 1
    assert value(m, "fraud_predicted_probability_bucket", model="a@1", le="0.5") == 1
    assert value(m, "fraud_predicted_probability_bucket", model="a@1", le="0.7") == 2
    assert value(m, "fraud_predicted_probability_bucket", model="b@2", le="0.2") == 0
    assert value(m, "fraud_predicted_probability_bucket", model="b@2", le="0.3") == 1
    assert value(m, "fraud_predicted_probability_bucket", model="b@2", le="+Inf") == 1


def test_generator_lag_is_what_the_offered_rate_made_due_but_not_read() -> None:
    now = [0.0]
    source = GeneratorSource(
        users=100, seed=0, partitions=1, rate=100.0, batch_max=1024, clock=lambda: now[0]
    )
    part = source.build_part("in", source.list_parts()[0], None)
    now[0] = 10.0  # 1000 events due; the batcher waits for its deadline first
    assert part.next_batch() == []
    assert STATS.inputs[0] == (0, 1000)
    now[0] = 10.05  # past the deadline: the 1005 due events go out, nothing is left
    (batch,) = part.next_batch()
    assert len(batch.values) == 1005
    assert STATS.inputs[0] == (1005, 1005)


def test_bounded_generator_lag_counts_down_to_zero() -> None:
    source = GeneratorSource(users=100, seed=0, partitions=2, events=3000, batch_max=500)
    part = source.build_part("in", source.list_parts()[1], None)
    part.next_batch()
    assert STATS.inputs[1] == (500, 1500)  # partition 1's quota is half the run
    with pytest.raises(StopIteration):
        while True:
            part.next_batch()
    assert STATS.inputs[1] == (1500, 1500)


def test_run_metrics_match_the_outputs(tmp_path: Path, model_dir: Path) -> None:
    """A run with a 50 % candidate: per-model scores, event-time clocks, lag 0, store bytes."""
    control = tmp_path / "control.jsonl"
    command = {"command": "load", "model_id": "canary", "path": "stateless.onnx", "rollout": 0.5}
    control.write_text(json.dumps(command) + "\n")
    s = load_settings(
        events=6000,
        users=600,
        partitions=4,
        seed=5,
        batch_max=256,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        status_interval=0,
        control_file=control,
        model_dir=model_dir,
        control_poll_interval=0.05,
    )
    before = collect()
    run_main(build_dataflow(s))
    after = collect()

    preds = [json.loads(x) for x in (s.output_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6000
    by_model: dict[str, list[float]] = defaultdict(list)
    times: dict[int, list[float]] = defaultdict(list)
    per_partition = Counter(p["partition"] for p in preds)
    for p in preds:
        by_model[p["model"]].append(p["probability"])
        times[p["partition"]].append(p["event_timestamp"])
    # The partition's event-time clock: its CLOCK_RANK-th largest event time.
    watermark = {p: sorted(ts, reverse=True)[CLOCK_RANK - 1] for p, ts in times.items()}
    assert len(by_model) == 2 and any(m.startswith("canary@") for m in by_model)
    for model, probs in by_model.items():
        count = value(after, "fraud_predicted_probability_count", model=model) - before.get(
            ("fraud_predicted_probability_count", (("model", model),)), 0.0
        )
        assert count == len(probs), model
        under_half = sum(x <= 0.5 for x in probs)
        le = (("le", "0.5"), ("model", model))
        got = after[("fraud_predicted_probability_bucket", le)] - before.get(
            ("fraud_predicted_probability_bucket", le), 0.0
        )
        assert got == under_half, model
    assert 0.5 in SCORE_BUCKETS
    for p in range(4):
        label = str(p)
        assert value(after, "fraud_consumer_lag_messages", partition=label) == 0
        assert value(after, "fraud_input_offset", partition=label) == per_partition[p]
        ts = value(after, "fraud_event_time_watermark_timestamp_seconds", partition=label)
        assert ts == watermark[p]
        assert value(after, "fraud_snapshot_age_seconds", partition=label) < 60
        assert value(after, "fraud_snapshot_last_duration_seconds", partition=label) < 10
        on_disk = sum(
            f.stat().st_size for f in partition_dir(s.state_dir, p).iterdir() if f.is_file()
        )
        exported = value(after, "fraud_state_disk_bytes", partition=label)
        # Measured at the last snapshot; closing the store afterwards flushes the WAL to SST.
        assert 0.2 * on_disk < exported < 5 * on_disk, (exported, on_disk)


@pytest.mark.kafka
def test_kafka_lag_is_the_brokers_high_water_mark_minus_the_position(
    kafka_broker: Broker,
) -> None:
    topic = f"lag-{uuid.uuid4().hex[:8]}"
    admin = admin_client({"bootstrap.servers": kafka_broker.bootstrap_servers})
    create_topic(admin, topic, 1)
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap_servers})
    for i in range(300):
        producer.produce(topic, value=b"x", key=str(i).encode(), partition=0)
    assert producer.flush(30) == 0
    config: dict[str, Any] = {
        "bootstrap.servers": kafka_broker.bootstrap_servers,
        "enable.partition.eof": True,
        "group.id": "lag-test",
    }
    reader = KafkaPartitionReader("in", config, topic, 0, 0, None, 100, 5.0)
    try:
        read = 0
        lags = []
        while read < 300:
            got = sum(len(b.values) for b in reader.next_batch())
            if not got:  # reads never block: come back when the reader says, as Bytewax does
                wake = reader.next_awake()
                time.sleep(0.001 if wake is None else max(wake.timestamp() - time.time(), 0))
                continue
            read += got
            pos, end = STATS.inputs[0]
            assert pos == read
            lags.append(end - pos)
        assert lags[0] == 300 - 100  # first batch: the broker's high-water mark is known
        assert lags[-1] == 0
    finally:
        reader.close()
