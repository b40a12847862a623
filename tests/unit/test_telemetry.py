"""The Prometheus endpoint: scraped values match what a run wrote.

`STATS` is process-global and other tests add to it, so the run-level test
compares a scrape taken after the run with one taken before it (deltas).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bytewax.testing import TestingSource, run_main
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.process.services import start_services
from bytewax_fraud.records import RawMessage
from bytewax_fraud.settings import load_settings
from bytewax_fraud.status import STATS, RunStats
from bytewax_fraud.telemetry import StatsCollector, start_exporter

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse(text: str) -> Samples:
    """Every sample as {(name, sorted labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return parse(resp.read().decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def buckets(samples: Samples, name: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of one histogram, in bound order."""
    got = [
        (float(dict(labels)["le"]), v)
        for (n, labels), v in samples.items()
        if n == f"{name}_bucket"
    ]
    return sorted(got)


def test_collector_exports_exact_values() -> None:
    stats = RunStats(model="m@abc", rollout=0.25)
    stats.record_scored(
        latencies_ms=np.array([1.5, 30.0, np.nan]),
        probabilities=np.array([0.1, 0.9, 0.2]),
        labels=np.array([-1, -1, -1]),
        replayed=1,
        expired=2,
        partition=3,
        inference_seconds=[2e-4, 5.0],
    )
    stats.record_dead_letters(["JSONDecodeError", "ValidationError", "JSONDecodeError"])
    stats.record_snapshot(3, 0.002, 1234)
    stats.record_delivery_failures(4)
    stats.cache_hits, stats.cache_misses = 7, 5
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    m = parse(generate_latest(registry).decode())

    assert value(m, "fraud_events_out_total") == 3
    assert value(m, "fraud_events_in_total") == 6
    assert value(m, "fraud_dead_letters_total", reason="JSONDecodeError") == 2
    assert value(m, "fraud_dead_letters_total", reason="ValidationError") == 1
    assert value(m, "fraud_replayed_total") == 1
    assert value(m, "fraud_expired_total") == 2
    assert value(m, "fraud_ttl_expired_total", partition="3") == 2
    assert value(m, "fraud_delivery_failures_total") == 4
    assert value(m, "fraud_cache_hits_total") == 7
    assert value(m, "fraud_cache_misses_total") == 5
    assert value(m, "fraud_state_keys", partition="3") == 1234
    assert value(m, "fraud_model_info", model="m@abc") == 1
    assert value(m, "fraud_model_rollout") == 0.25
    # Replayed events (NaN latency) are not timed: 2 observations, 1.5 ms and 30 ms.
    lat = buckets(m, "fraud_latency_seconds")
    assert dict(lat)[0.001] == 0 and dict(lat)[0.002] == 1 and dict(lat)[0.05] == 2
    assert lat[-1] == (float("inf"), 2)
    assert value(m, "fraud_latency_seconds_count") == 2
    assert value(m, "fraud_latency_seconds_sum") == pytest.approx(0.0315)
    inf = buckets(m, "fraud_inference_seconds")
    assert dict(inf)[1.0] == 1 and inf[-1] == (float("inf"), 2)  # 5 s lands in +Inf only
    assert value(m, "fraud_batch_size_count") == 1 and value(m, "fraud_batch_size_sum") == 3
    assert value(m, "fraud_snapshot_seconds_count") == 1


def _messages(n_valid: int, bad: list[dict[str, Any]]) -> tuple[list[RawMessage], str, int]:
    """Generated events with bad ones between them, plus one user idle for 40 days.

    Returns the messages, the idle user's id and its partition.
    """
    gen = TransactionGenerator(users=50, seed=1)
    offsets = [0] * 4
    msgs: list[RawMessage] = []

    def add(value: bytes, p: int) -> None:
        msgs.append(RawMessage(value, b"k", "test", p, offsets[p], None, time.time_ns()))
        offsets[p] += 1

    for i, value in enumerate(v for v, _ in zip(gen.events(), range(n_valid), strict=False)):
        p = partition_for(json.loads(value)["user_id"], 4)
        add(value, p)
        if i < len(bad):
            add(bad[i]["value"], p)
    idle = "u-idle-40-days"
    p = partition_for(idle, 4)
    for i, ts in enumerate((1_700_000_000, 1_700_000_000 + 40 * 86400)):
        tx = {
            "transaction_id": f"idle-{i}",
            "user_id": idle,
            "amount": 10.0,
            "currency": "EUR",
            "timestamp": ts,
            "merchant": "m-1",
        }
        add(json.dumps(tx).encode(), p)
    return msgs, idle, p


def test_scraped_metrics_match_the_run(tmp_path: Path, bad_corpus: list[dict[str, Any]]) -> None:
    port = free_port()
    s = load_settings(
        partitions=4,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        status_interval=0,
        batch_max=64,
        metrics_port=port,
    )
    msgs, _, idle_partition = _messages(300, bad_corpus)
    flow = build_dataflow(s, source=TestingSource(msgs, batch_size=64))
    start_services(s)  # what the entry points do: the exporter among them
    before = scrape(port)
    run_main(flow)
    after = scrape(port)

    preds = (s.output_dir / "predictions.jsonl").read_text().splitlines()
    dead = [json.loads(x) for x in (s.output_dir / "dead_letters.jsonl").read_text().splitlines()]
    assert len(preds) == 302 and len(dead) == len(bad_corpus)

    assert delta(after, before, "fraud_events_out_total") == len(preds)
    assert delta(after, before, "fraud_events_in_total") == len(preds) + len(dead)
    by_reason = Counter(d["error_class"] for d in dead)
    assert len(by_reason) > 1
    for reason, n in by_reason.items():
        assert delta(after, before, "fraud_dead_letters_total", reason=reason) == n, reason
    # The idle user is the only one whose state passed the 30-day TTL.
    assert delta(after, before, "fraud_expired_total") == 1
    assert delta(after, before, "fraud_ttl_expired_total", partition=str(idle_partition)) == 1

    # Every scored event is in one batch and has one latency; each batch made >= 1 model call.
    batches = delta(after, before, "fraud_batch_size_count")
    assert batches >= 4
    assert delta(after, before, "fraud_batch_size_sum") == len(preds)
    assert delta(after, before, "fraud_latency_seconds_count") == len(preds)
    assert delta(after, before, "fraud_inference_seconds_count") >= batches
    for name in ("fraud_batch_size", "fraud_inference_seconds", "fraud_latency_seconds"):
        counts = [c for _, c in buckets(after, name)]
        assert counts == sorted(counts), name  # cumulative
        assert counts[-1] == value(after, f"{name}_count"), name
    # Each of the 4 partitions snapshots at least once (at the end of input) with its key count.
    assert delta(after, before, "fraud_snapshot_seconds_count") >= 4
    users = Counter(json.loads(x)["partition"] for x in preds)
    for p in range(4):
        assert value(after, "fraud_state_keys", partition=str(p)) > 0
        assert users[p] > 0
    assert value(after, "fraud_model_info", model=STATS.model) == 1
    assert STATS.model.startswith("fraud_gru@")
    # Each user's record is read from RocksDB once (the cache holds them all), then from memory.
    reads = (
        delta(after, before, "fraud_cache_hits_total"),
        delta(after, before, "fraud_cache_misses_total"),
    )
    assert reads[1] == len({json.loads(x)["user_id"] for x in preds})
    assert reads[0] > 0 and sum(reads) <= len(preds)


def test_exporter_starts_once_per_port() -> None:
    port = free_port()
    assert start_exporter(port, addr="127.0.0.1")
    assert not start_exporter(port, addr="127.0.0.1")
    assert not start_exporter(None)
    assert "fraud_events_out_total" in {name for name, _ in scrape(port)}


def test_port_in_use_is_a_settings_error_naming_the_variable() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SettingsError, match=f"FRAUD_METRICS_PORT={port}"):
            start_exporter(port, addr="127.0.0.1")


def test_metrics_port_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_METRICS_PORT", "9100")
    assert load_settings().metrics_port == 9100
    monkeypatch.setenv("FRAUD_METRICS_PORT", "70000")
    with pytest.raises(SettingsError, match="FRAUD_METRICS_PORT"):
        load_settings()
    monkeypatch.delenv("FRAUD_METRICS_PORT")
    assert load_settings().metrics_port is None


def test_event_time_counts_and_clock_are_exported_and_shown() -> None:
    stats = RunStats(model="m@abc")
    stats.record_event_time(2, 1_767_225_600.0, 3)
    stats.record_event_time(3, float("-inf"), 0)  # a partition whose clock is not defined yet
    stats.record_dead_letters(["TimestampTooLate", "TimestampTooFarAhead", "WrongPartition"] * 2)
    stats.record_dead_letters(["WrongPartition"])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(stats))
    m = parse(generate_latest(registry).decode())
    assert value(m, "fraud_late_accepted_total") == 3
    assert (
        value(m, "fraud_event_time_watermark_timestamp_seconds", partition="2") == 1_767_225_600.0
    )
    assert ("fraud_event_time_watermark_timestamp_seconds", (("partition", "3"),)) not in m
    assert value(m, "fraud_dead_letters_total", reason="WrongPartition") == 3
    line = stats.status_line()
    assert "dead letters 7 (late 2, early 2, misrouted 3) | late scored 3" in line
    summary = stats.summary()
    assert (summary["too_late"], summary["too_early"], summary["misrouted"]) == (2, 2, 3)
    assert summary["late_accepted"] == 3
