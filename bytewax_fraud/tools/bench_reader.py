"""Latency as an outside reader sees it: a paced producer, the job, a consumer in its own process.

The producer stamps each event with its wall-clock time just before handing it
to librdkafka (kept here, by the event's input partition and offset, which a
single idempotent producer on a fresh topic determines). A reader in a process
of its own consumes the predictions topic and stamps each message with its
wall-clock receive time; a prediction names its input's partition and offset,
so its latency is the receive time minus that event's stamp, per message, in
microseconds. The reader never sleeps between polls (`consume` returns as soon
as a message is there), so no polling period biases the figures.

The broker alone is measured the same way: the reader reads the input topic
itself, with no job in between. Rates are fractions of the 1-worker maximum,
measured first on a backlog (`bench.run_kafka`) unless `--max-rate` gives it.

    python -m bytewax_fraud.tools.bench_reader --loads 0.2,0.5 --json out.json

`--job-root DIR` runs the job from another checkout (a back-to-back A/B of two
versions on one broker and one machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools import bench
from bytewax_fraud.tools.produce import generated

_PILOT = 200


def read(
    bootstrap: str, topic: str, partitions: int, count: int, out: Path, committed: bool
) -> None:
    """The reader process: consume `count` messages of `topic`, record their receive times.

    Writes `out` as an [n, 3] float64 array: input partition, input offset, receive
    time (epoch seconds). A prediction names its input (`"partition"`, `"offset"`);
    a message of the input topic is its own input.
    """
    from confluent_kafka import Consumer, TopicPartition

    s = load_settings(kafka_bootstrap_servers=bootstrap, partitions=partitions)
    config = {**kafka_connection(s).consumer("earliest"), "group.id": "bytewax-fraud-reader"}
    if committed:
        config["isolation.level"] = "read_committed"
    c = Consumer(config)
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    rows: list[tuple[int, int, float]] = []
    own = not topic.endswith("-predictions")
    deadline = time.monotonic() + bench._RUN_TIMEOUT_S
    while len(rows) < count and time.monotonic() < deadline:
        batch = c.consume(1000, 0.1)
        now = time.time()
        for m in batch:
            if m.error() is not None:
                continue
            if own:
                rows.append((int(m.partition() or 0), int(m.offset() or 0), now))
            else:
                pos = bench._PRED_POS.search(m.value() or b"")
                if pos is not None:
                    rows.append((int(pos.group(1)), int(pos.group(2)), now))
    c.close()
    np.save(out, np.asarray(rows, np.float64).reshape(-1, 3))


def _paced(
    producer: Any, topic: str, msgs: list[tuple[bytes | None, bytes]], rate: float
) -> list[float]:
    """Produce at `rate`/s; each message's wall-clock time just before `produce`."""
    stamps: list[float] = []
    t0 = time.monotonic()
    for i, (key, value) in enumerate(msgs):
        due = t0 + i / rate
        while (now := time.monotonic()) < due:
            producer.poll(min(due - now, 0.001))
        while True:
            stamps.append(time.time())
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                stamps.pop()
                producer.poll(0.001)
    producer.flush()
    return stamps


def point(
    broker: bench.Broker,
    cfg: bench.BenchConfig,
    workdir: Path,
    variant: str,
    rate: float,
    seconds: float,
    job_root: Path,
    commit_interval: float,
) -> dict[str, Any]:
    """One variant (`broker`, `alo`, `eos`) at one rate: the reader's latency percentiles."""
    from confluent_kafka import Producer

    d = Path(tempfile.mkdtemp(prefix=f"reader-{variant}-", dir=workdir))
    prefix = f"fraud-reader-{uuid.uuid4().hex[:8]}"
    t_in, t_pred, t_dl = (f"{prefix}-{t}" for t in ("transactions", "predictions", "dead-letters"))
    s = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers, partitions=cfg.partitions)
    conn = kafka_connection(s)
    admin = admin_client(conn.admin())
    create_job_topics(admin, cfg.partitions, t_in, t_pred, t_dl, s.kafka_max_message_bytes)
    events = max(int(rate * seconds), 50 * cfg.partitions)
    msgs = list(generated(cfg.users, cfg.seed, _PILOT + events))
    producer = Producer(conn.producer())
    job = None
    if variant != "broker":
        env = bench._kafka_env(cfg, broker, prefix, t_in, t_pred, t_dl, d)
        env.pop("FRAUD_KAFKA_STOP_AT_END")
        env["PYTHONPATH"] = str(job_root)
        cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
        if variant == "eos":
            env["FRAUD_KAFKA_DELIVERY"] = "exactly-once"
            env["FRAUD_RECOVERY_DIR"] = str(d / "recovery")
            env["FRAUD_SNAPSHOT_INTERVAL"] = str(commit_interval)
            cmd = [sys.executable, "-m", "bytewax_fraud"]
            (d / "state").rename(d / "state-unused")
        with open(d / "log.txt", "wb") as log:
            job = subprocess.Popen(cmd, cwd=job_root, env=env, stdout=log, stderr=subprocess.STDOUT)
    out = d / "reader.npy"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax_fraud.tools.bench_reader",
            "read",
            broker.bootstrap_servers,
            t_pred if job else t_in,
            str(cfg.partitions),
            str(_PILOT + events),
            str(out),
            "1" if variant == "eos" else "0",
        ],
        env={**os.environ, "PYTHONPATH": str(bench.ROOT)},
    )
    try:
        for key, value in msgs[:_PILOT]:  # start-up over before the clock starts
            producer.produce(t_in, value, key)
        producer.flush()
        if job is not None:
            bench._wait_for_messages(conn.consumer("earliest"), t_pred, _PILOT, job, d / "log.txt")
        time.sleep(1.0)
        stamps = _paced(producer, t_in, msgs[_PILOT:], rate)
        if reader.wait(bench._RUN_TIMEOUT_S) != 0:
            raise bench.BenchError(f"{variant}: the reader exited with {reader.returncode}")
    finally:
        for proc in (reader, job):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    admin.delete_topics([t_in, t_pred, t_dl], operation_timeout=10)
    # Where each paced event landed: one producer, a fresh topic, so offsets count up.
    sent: dict[tuple[int, int], float] = {}
    nxt = [0] * cfg.partitions
    for i, (key, _) in enumerate(msgs):
        p = partition_for((key or b"").decode(), cfg.partitions)
        if i >= _PILOT:
            sent[(p, nxt[p])] = stamps[i - _PILOT]
        nxt[p] += 1
    rows = np.load(out)
    first = min(stamps)
    lat = np.asarray(
        [
            (recv - sent[(int(p), int(o))]) * 1000.0
            for p, o, recv in rows
            if (int(p), int(o)) in sent and sent[(int(p), int(o))] - first >= cfg.warmup_s
        ]
    )
    p50, p99, p999 = (round(float(np.percentile(lat, q)), 1) for q in (50, 99, 99.9))
    return {
        "variant": variant,
        "offered_per_s": round(rate, 1),
        "events": events,
        "counted": int(lat.size),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": round(float(lat.max()), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Measure and print the outside reader's view; `read ...` is the reader process."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "read":
        b, topic, parts, count, out, committed = argv[1:7]
        read(b, topic, int(parts), int(count), Path(out), committed == "1")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--loads", default="0.2,0.5", help="fractions of the 1-worker maximum")
    ap.add_argument("--variants", default="broker,alo,eos", help="broker, alo, eos")
    ap.add_argument("--max-rate", type=float, help="the 1-worker maximum (default: measured)")
    ap.add_argument("--max-events", type=int, default=100_000, help="backlog of that measure")
    ap.add_argument("--seconds", type=float, default=6.0, help="length of each point")
    ap.add_argument("--commit-interval", type=float, default=1.0, help="eos: seconds")
    ap.add_argument("--job-root", type=Path, default=bench.ROOT, help="the checkout to run")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    cfg = bench.BenchConfig()
    workdir = Path(tempfile.mkdtemp(prefix="bench-reader-"))
    report: dict[str, Any] = {"job_root": str(a.job_root), "points": []}
    with bench.bench_broker(workdir) as (broker, where):
        if broker is None:
            print(f"no broker: {where}")
            return 2
        top = a.max_rate
        if top is None:
            bench.ROOT = a.job_root  # the backlog run starts the job from this checkout
            top = bench.run_kafka(
                cfg, "kafka-1w", workdir, broker, events=a.max_events
            ).events_per_s
        report["max_events_per_s"] = top
        print(f"1-worker maximum: {top:,.0f} ev/s ({where})")
        for frac in (float(x) for x in a.loads.split(",")):
            for v in a.variants.split(","):
                r = point(
                    broker, cfg, workdir, v, frac * top, a.seconds, a.job_root, a.commit_interval
                )
                r["load"] = frac
                report["points"].append(r)
                print(
                    f"  {v:6s} @{frac:.0%} ({r['offered_per_s']:,.0f}/s, {r['counted']} counted):"
                    f" p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms"
                )
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
