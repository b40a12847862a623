"""The benchmark's smoke configuration runs every variant and reports sane figures.

This checks that the benchmark works, not how fast anything is.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from bytewax_fraud.tools.bench.broker import topic_rate
from bytewax_fraud.tools.bench.cli import main, parse_args
from bytewax_fraud.tools.bench.report import format_kafka_cpu
from bytewax_fraud.tools.local_broker import BrokerUnavailable, kafka_libs


def broker_available() -> bool:
    """Whether the benchmark can reach or start a broker (else its Kafka variant is skipped)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return True
    try:
        kafka_libs()
    except BrokerUnavailable:
        return False
    return True


def test_quick_benchmark_reports_every_variant(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    assert (
        main(["--quick", "--json", str(out), "--plot", str(png), "--workdir", str(tmp_path)]) == 0
    )

    report = json.loads(out.read_text())
    assert report["hardware"]["nproc"] >= 1
    assert report["settings"]["events"] == 20_000
    variants = report["variants"]
    expected = {
        "embedded-1w",
        "embedded-2p",
        "embedded-2t",
        "handwritten-batched",
        "handwritten-per-event",
        "dataflow-batch-1",
        "external-http",
    }
    kafka = report["kafka"]
    if broker_available():
        expected |= {"kafka-1w", "kafka-2p"}
        assert kafka["ran"] is True and kafka["broker"]
        assert kafka["produce_msg_per_s"] > 0 and kafka["dead_letters"] == {}
        assert variants["kafka-1w"]["events"] == variants["embedded-1w"]["events"]
        assert variants["kafka-2p"]["extra"]["processes"] == 2
        # What an event cost the job (both processes, start-up left out) and the broker.
        for name in ("kafka-1w", "kafka-2p"):
            e = variants[name]["extra"]
            assert e["job_cpu_us_per_event"] > 1, e
            assert 0 < e["job_cores_while_scoring"] <= 2 * e["cores"], e
            if kafka["broker"].startswith("Apache Kafka, started here"):  # its /proc is ours
                assert e["broker_cpu_us_per_event"] > 0 and e["cpu_bound_events_per_s"] > 0, e
        # The outside reader's view: every path at each load, with its margin over the broker.
        reader = kafka["outside_reader"]
        assert {(p["variant"], p["load"]) for p in reader["points"]} == {
            (v, 0.5) for v in ("broker", "alo", "alo-r", "eos", "broker-1p", "alo-1p", "eos-1p")
        }
        for p in reader["points"]:
            assert p["counted"] > 0 and 0 <= p["p50_ms"] <= p["p99_ms"], p
            assert p["partitions"] == (1 if p["variant"].endswith("-1p") else 4), p
            brokers = ("broker", "broker-1p")
            parts = {"to_job", "in_job", "to_reader"} if p["variant"] not in brokers else set()
            assert len(p["to_createtime_ms"]) == (0 if p["variant"] in brokers else 2), p
            assert set(p["segments_ms"]) == parts, p
            assert p["cpu_cores"]["all"] > 0 and "producer" in p["cpu_cores"], p
        # --quick: one warm-up round, however busy the broker's JIT still is.
        assert reader["warmup"]["rounds"] == 1 and reader["warmup"]["jit_share"] is not None
        assert set(reader["p99_over_broker_ms"]["50%"]) == {
            "alo",
            "alo-r",
            "eos",
            "alo-1p",
            "eos-1p",
        }
        # Each job path against the broker alone on topics of as many partitions.
        p99 = {p["variant"]: p["p99_ms"] for p in reader["points"]}
        over = reader["p99_over_broker_ms"]["50%"]
        assert over["alo"] == round(p99["alo"] - p99["broker"], 1)
        assert over["alo-1p"] == round(p99["alo-1p"] - p99["broker-1p"], 1)
        assert over["eos-1p"] == round(p99["eos-1p"] - p99["broker-1p"], 1)
    else:
        assert kafka["ran"] is False and kafka["reason"]
    assert set(variants) == expected
    sweep = report["load_sweep"]["points"]
    systems = {"embedded-1w", "external", "external-own"}
    if broker_available():  # the end-to-end latency through both topics, at 50 %
        systems |= {"kafka-1w", "broker-only"}
    assert {p["name"].split("@")[0] for p in sweep} == systems
    for r in [*variants.values(), *sweep]:
        assert r["events"] > 0 and r["events_per_s"] > 0, r["name"]
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            assert math.isfinite(r[k]) and r[k] >= 0, (r["name"], k)
        assert r["peak_rss_mb"] > 0 or r["name"].startswith("broker-only"), r["name"]
    # Every variant's throughput against the hand-written batched loop, in the JSON too.
    ratios = report["ratios"]
    assert ratios["reference"] == "handwritten-batched"
    assert set(ratios["x_handwritten"]) == expected
    ref = variants["handwritten-batched"]["events_per_s"]
    for r in variants.values():
        assert r["extra"]["x_external"] > 0
        x = r["extra"]["x_handwritten"]
        assert x == ratios["x_handwritten"][r["name"]]
        assert math.isclose(x, r["events_per_s"] / ref, abs_tol=1e-3), r["name"]
    assert variants["handwritten-batched"]["extra"]["x_handwritten"] == 1.0
    targets = {t["target"]: t for t in ratios["targets"]}
    assert "embedded-1w / handwritten-batched" in targets
    assert "embedded-2p / embedded-1w" in targets
    assert variants["dataflow-batch-1"]["extra"]["batch_max"] == 1
    assert variants["handwritten-per-event"]["extra"]["model_calls"] == 5_000
    # Batched: at most 512 events per call, so at least events / 512 calls.
    assert variants["handwritten-batched"]["extra"]["model_calls"] >= 20_000 / 512
    assert set(report["load_sweep"]["p99_ms_at_50pct"]) == systems
    # The plot is drawn only where matplotlib is installed (the `bench` extra).
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.stat().st_size > 0


def test_skip_kafka_flag() -> None:
    assert parse_args(["--quick", "--skip-kafka"])[0].skip_kafka
    assert not parse_args(["--quick"])[0].skip_kafka


def test_topic_rate_counts_after_the_first_timestamp_and_skips_the_warmup() -> None:
    ts = np.array([1000, 1000, 1100, 1200, 1500, 2000], np.int64)
    rate, skip = topic_rate(ts, warmup_s=0.15, events=6, fallback=-1.0)
    assert rate == 4 / 1.0  # 4 messages after t0, over 1 s
    assert skip == 3  # 1000, 1000, 1100 are within 150 ms of the first
    assert topic_rate(ts[:2], 0.0, 2, fallback=7.0) == (7.0, 0)  # too short a span


def test_kafka_cpu_lines_bound_the_ratio_by_the_cores() -> None:
    def variant(rate: float, job_us: float, broker_us: float) -> dict[str, object]:
        extra = {
            "job_cpu_us_per_event": job_us,
            "job_cores_while_scoring": 1.0,
            "broker_cpu_us_per_event": broker_us,
            "cores": 2,
            "cpu_bound_events_per_s": 2e6 / (job_us + broker_us),
        }
        return {"events_per_s": rate, "extra": extra}

    lines = format_kafka_cpu(
        {"kafka-1w": variant(40_000, 25, 5), "kafka-2p": variant(64_000, 27, 5)}
    )
    assert lines[0].startswith("kafka-1w: CPU per event: job 25.0 us") and "66,667 ev/s" in lines[0]
    assert "62,500 ev/s of both: this run did 102% of it" in lines[1]
    assert lines[2] == "  so kafka-2p / kafka-1w cannot exceed 1.56 on these cores"
