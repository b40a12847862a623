"""The Kafka variants: the job between two topics, and the broker alone.

`run_kafka` runs the job on a backlog (its rate from the predictions'
CreateTime timestamps), `run_kafka_paced` at an offered rate (latency from
input to prediction CreateTime), `run_broker_floor` produces and consumes the
same messages with no job between (`broker` sets each one up).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.tools.bench.broker import (
    KafkaRun,
    input_config,
    input_producer,
    kafka_env,
    kafka_run,
    produce_paced,
    topic_rate,
    wait_for_messages,
)
from bytewax_fraud.tools.bench.config import (
    ROOT,
    RUN_TIMEOUT_S,
    BenchConfig,
    BenchError,
    Result,
)
from bytewax_fraud.tools.bench.runner import (
    LATENCY,
    PRED_POS,
    cpu_seconds,
    percentiles,
    start_processes,
    tail,
    wait,
)
from bytewax_fraud.tools.local_broker import Broker
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

if TYPE_CHECKING:
    pass


def run_kafka(
    cfg: BenchConfig,
    name: str,
    workdir: Path,
    broker: Broker,
    *,
    events: int,
    processes: int = 1,
    produced: list[tuple[bytes | None, bytes]] | None = None,
    extra_env: dict[str, str] | None = None,
    job_root: Path = ROOT,
) -> Result:
    """Produce `events` generated events (or `produced`), run the job on them through Kafka.

    `extra_env` adds settings; with FRAUD_RECOVERY_DIR among them the job runs as
    `python -m bytewax_fraud` (which applies the recovery settings), with its
    directory made under this variant's own. `job_root` is the checkout the job
    runs from.
    """
    run = kafka_run(cfg, broker, workdir, name, "bench")
    d, t_in, t_pred, t_dl = run.dir, run.t_in, run.t_pred, run.t_dl
    # Generated first, so that the producing rate is the client's and the broker's alone.
    msgs = list(generated(cfg.users, cfg.seed, events)) if produced is None else produced
    t0 = time.monotonic()
    produce(input_config(run.conn), t_in, cfg.partitions, msgs)
    produce_s = time.monotonic() - t0
    del msgs

    env = kafka_env(cfg, broker, run.prefix, t_in, t_pred, t_dl, d, root=job_root)
    env.update(extra_env or {})
    broker_cpu = _broker_cpu(broker)
    codes = _run_to_end(name, env, d, processes, job_root)
    broker_cpu = _broker_cpu(broker) - broker_cpu
    ts, lat = _read_predictions(cfg, name, run, events)
    summaries = _read_summaries(d, processes)
    summary_rate, dead = _summaries(summaries)
    cpu = _cpu_per_event(summaries, broker_cpu, events)
    rate, skip = topic_rate(ts, cfg.warmup_s, events, summary_rate)
    p50, p99, p999 = percentiles(lat[skip:])
    admin_client(run.conn.admin()).delete_topics([t_in, t_pred, t_dl], operation_timeout=10)
    shutil.rmtree(d, ignore_errors=True)
    return Result(
        name=name,
        events=events,
        events_per_s=round(rate, 1),
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=round(sum(kib for _, kib in codes) / 1024, 1),
        extra={
            "processes": processes,
            "threads": 1,
            "batch_max": int(Settings.model_fields["batch_max"].default),
            "rate_from": "predictions topic CreateTime timestamps",
            "summary_events_per_s": round(summary_rate, 1),
            "dead_letters": dead,
            "warmup_skipped": skip,
            "produce_s": round(produce_s, 3),
            "produce_msg_per_s": round(events / max(produce_s, 1e-9), 1),
            **cpu,
        },
    )


def _broker_cpu(broker: Broker) -> float:
    """The broker's CPU seconds so far; NaN for one not started here (its /proc is not ours)."""
    used = cpu_seconds(broker.process.pid) if broker.process is not None else None
    return math.nan if used is None else used


def _cpu_per_event(
    summaries: list[dict[str, Any]], broker_cpu_s: float, events: int
) -> dict[str, float]:
    """What an event cost in CPU: the job's processes while they scored, the broker over the run.

    The job's figure is from its summaries (`scoring_cpu_s`: every thread of each process,
    from its first scored batch to its last, so start-up is left out); the broker's covers
    the job's whole run (it idles while the job starts). Together they say how many events
    a second the job and the broker can share on this machine's cores, whatever the split.
    """
    job_cpu = sum(float(x["scoring_cpu_s"]) for x in summaries)
    scored = sum(int(x["scored"]) for x in summaries)
    job_us = 1e6 * job_cpu / max(scored, 1)
    broker_us = 1e6 * broker_cpu_s / max(events, 1)
    cores = os.cpu_count() or 1
    return {
        "job_cpu_us_per_event": round(job_us, 2),
        "job_cores_while_scoring": round(
            sum(float(x["scoring_cpu_s"]) / max(float(x["scoring_s"]), 1e-9) for x in summaries), 2
        ),
        "broker_cpu_us_per_event": round(broker_us, 2),
        "cores": cores,
        "cpu_bound_events_per_s": round(cores * 1e6 / (job_us + broker_us), 1),
    }


def _run_to_end(
    name: str, env: dict[str, str], d: Path, processes: int, root: Path
) -> list[tuple[int | None, int]]:
    """Run the job's processes until they stop at the end of the input: (exit code, KiB) each."""
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
    if "FRAUD_RECOVERY_DIR" in env:
        env["FRAUD_RECOVERY_DIR"] = str(d / env["FRAUD_RECOVERY_DIR"])
        cmd = [sys.executable, "-m", "bytewax_fraud"]
        # Process 0 creates the state with its recovery directory; the others wait for it.
        shutil.rmtree(d / "state")
    procs = start_processes(cmd, env, d, processes, root)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    codes = wait(procs, deadline)
    while any(rc is None for rc, _ in codes):
        time.sleep(0.05)
        codes = wait(procs, deadline)
    if any(rc != 0 for rc, _ in codes):
        logs = "\n".join(tail(d / f"log-{i}.txt") for i in range(processes))
        raise BenchError(f"{name}: bytewax.run exited with {[rc for rc, _ in codes]}:\n{logs}")
    return codes


def _read_predictions(
    cfg: BenchConfig, name: str, run: KafkaRun, events: int
) -> tuple[np.ndarray, np.ndarray]:
    """The predictions topic's CreateTime timestamps (ms) and `latency_ms`, by timestamp."""
    ts_ms: list[int] = []
    lat_ms: list[float] = []
    for msg in messages(run.conn.consumer("earliest"), run.t_pred, cfg.partitions):
        m = LATENCY.search(msg.value() or b"")
        if m is None:
            raise BenchError(f"{name}: a prediction on {run.t_pred!r} has no latency_ms")
        ts_ms.append(msg.timestamp()[1])
        lat_ms.append(float(m.group(1)))
    if len(lat_ms) != events:
        raise BenchError(
            f"{name}: expected {events} predictions on {run.t_pred!r}, found {len(lat_ms)}"
        )
    order = np.argsort(np.asarray(ts_ms), kind="stable")
    return np.asarray(ts_ms, np.int64)[order], np.asarray(lat_ms, np.float64)[order]


def _read_summaries(d: Path, processes: int) -> list[dict[str, Any]]:
    """The job processes' end-of-run summaries (`FRAUD_SUMMARY_FILE`), process 0 first."""
    return [json.loads((d / f"summary-{i}.json").read_text()) for i in range(processes)]


def _summaries(summaries: list[dict[str, Any]]) -> tuple[float, dict[str, int]]:
    """The job summaries' events/s (summed over the processes) and dead letters by reason."""
    summary_rate = sum(float(x["events_per_s"]) for x in summaries)
    dead: dict[str, int] = {}
    for x in summaries:
        for k, v in (x["dead_letters"] or {}).items():
            dead[k] = dead.get(k, 0) + int(v)
    return summary_rate, dead


def run_kafka_paced(
    cfg: BenchConfig, name: str, workdir: Path, broker: Broker, *, events: int, rate: float
) -> Result:
    """The 1-worker job through Kafka at an offered rate: latency from produce to prediction.

    The job runs first (no stop at end) and scores a pilot of 200 events, so that
    start-up is over; then the bench produces `events` generated events at `rate`
    per second and reads the predictions topic until every one has arrived. The
    latency of an event is its prediction's CreateTime (the job's producer) minus
    its input message's CreateTime (the bench's producer): the whole way through
    both topics, at the brokers' millisecond resolution. Events produced in the
    first `--warmup-s` seconds are not counted.
    """

    run = kafka_run(cfg, broker, workdir, name.replace("%", "pct"), "bench")
    d, prefix, t_in, t_pred, t_dl = run.dir, run.prefix, run.t_in, run.t_pred, run.t_dl
    conn = run.conn
    admin = admin_client(conn.admin())
    pilot = 200
    msgs = list(generated(cfg.users, cfg.seed, pilot + events))
    env = kafka_env(cfg, broker, prefix, t_in, t_pred, t_dl, d)
    env.pop("FRAUD_KAFKA_STOP_AT_END")
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
    producer = input_producer(conn)
    with open(d / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for key, value in msgs[:pilot]:
            producer.produce(t_in, value, key)
        producer.flush()
        wait_for_messages(conn.consumer("earliest"), t_pred, pilot, proc, d / "log.txt")
        produce_paced(producer, t_in, msgs[pilot:], rate)
        wait_for_messages(conn.consumer("earliest"), t_pred, pilot + events, proc, d / "log.txt")
    finally:
        if proc.poll() is None:
            proc.terminate()
        codes = wait([proc], time.monotonic() + 10)
        while codes[0][0] is None:
            time.sleep(0.05)
            codes = wait([proc], time.monotonic() + 10)
    produced: dict[tuple[int, int], int] = {}
    for msg in messages(conn.consumer("earliest"), t_in, cfg.partitions):
        produced[(int(msg.partition() or 0), int(msg.offset() or 0))] = msg.timestamp()[1]
    lat: list[tuple[int, int]] = []  # (input CreateTime, end-to-end ms)
    in_job: list[float] = []  # the predictions' latency_ms (source emission to prediction)
    for msg in messages(conn.consumer("earliest"), t_pred, cfg.partitions):
        m = PRED_POS.search(msg.value() or b"")
        if m is None:
            raise BenchError(f"{name}: a prediction on {t_pred!r} has no partition and offset")
        t_made = produced[(int(m.group(1)), int(m.group(2)))]
        lat.append((t_made, msg.timestamp()[1] - t_made))
        inner = LATENCY.search(msg.value() or b"")
        in_job.append(float(inner.group(1)) if inner else math.nan)
    admin.delete_topics([t_in, t_pred, t_dl], operation_timeout=10)
    lat.sort()
    first = lat[pilot][0] if len(lat) > pilot else 0
    kept = np.asarray([ms for t, ms in lat[pilot:] if t - first >= cfg.warmup_s * 1000.0])
    made = np.asarray([t for t, _ in lat[pilot:]], np.int64)
    done = np.sort(made + np.asarray([ms for _, ms in lat[pilot:]], np.int64))
    span = max(int(done[-1] - done[0]), 1) / 1000.0 if len(done) else math.nan
    p50, p99, p999 = percentiles(kept.astype(np.float64))
    shutil.rmtree(d, ignore_errors=True)
    return Result(
        name=name,
        events=events,
        events_per_s=round((len(done) - 1) / span, 1),
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=round(codes[0][1] / 1024, 1),
        offered_per_s=round(rate, 1),
        extra={
            "latency": "prediction CreateTime - input CreateTime (ms resolution)",
            "pilot_events": pilot,
            "in_job_p50_p99_ms": percentiles(np.asarray(in_job[pilot:], np.float64))[:2],
            "warmup_skipped": events - len(kept),
        },
    )


def run_broker_floor(
    cfg: BenchConfig, name: str, broker: Broker, *, events: int, rate: float
) -> Result:
    """The broker's own latency at an offered rate: produce, then consume, with no job between.

    The same client properties as the job's producer and consumer, the same
    generated messages and pacing as `run_kafka_paced`; the latency of a message
    is the time it was consumed minus its CreateTime. This is the floor under the
    Kafka variant's end-to-end latency (one hop here, two there).
    """
    import threading

    from confluent_kafka import Consumer, TopicPartition

    s = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers, partitions=cfg.partitions)
    conn = kafka_connection(s)
    admin = admin_client(conn.admin())
    topic = f"fraud-bench-{uuid.uuid4().hex[:8]}-floor"
    create_job_topics(admin, cfg.partitions, topic, f"{topic}-p", f"{topic}-d", 1_048_576)
    msgs = list(generated(cfg.users, cfg.seed, events))
    consumer = Consumer({**conn.consumer("earliest"), "group.id": "bytewax-fraud-bench"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(cfg.partitions)])
    got: list[tuple[int, float]] = []  # (CreateTime ms, consumed at ms)
    done = threading.Event()

    def consume() -> None:
        while not done.is_set() or len(got) < events:
            # `poll` returns as soon as a message is there; `consume(n, t)` would hold it
            # until n arrived or t passed (a bias of up to t on the floor).
            first = consumer.poll(0.02)
            now = time.time() * 1000.0
            for m in [first, *consumer.consume(1000, 0)] if first is not None else []:
                if m.error() is None:
                    got.append((m.timestamp()[1], now))
            if done.is_set() and time.monotonic() > deadline:
                return

    deadline = time.monotonic() + RUN_TIMEOUT_S
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = input_producer(conn)
    produce_paced(producer, topic, msgs, rate)
    deadline = time.monotonic() + 30.0
    done.set()
    reader.join()
    consumer.close()
    admin.delete_topics([topic, f"{topic}-p", f"{topic}-d"], operation_timeout=10)
    got.sort()
    first = got[0][0] if got else 0
    lat = np.asarray([c - t for t, c in got if t - first >= cfg.warmup_s * 1000.0], np.float64)
    p50, p99, p999 = percentiles(lat)
    span = (got[-1][0] - first) / 1000.0 if len(got) > 1 else math.nan
    return Result(
        name=name,
        events=len(got),
        events_per_s=round((len(got) - 1) / span, 1) if span and span > 0 else 0.0,
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=0.0,
        offered_per_s=round(rate, 1),
        extra={"latency": "consumed - CreateTime, one hop, no job", "lost": events - len(got)},
    )
