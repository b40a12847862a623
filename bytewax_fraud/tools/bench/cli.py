"""Benchmark: the embedded dataflow against hand-written loops and an external-call baseline.

One run measures, on the same generated workload:

1. the dataflow end to end (generator -> parse -> scoring with RocksDB state ->
   JSON Lines sinks), as `python -m bytewax.run dataflows.fraud` subprocesses,
   with 1 worker and with N workers (N processes of one worker each, since
   threads share the GIL, and one process of N threads);
2. the hand-written baselines (`bytewax_fraud.tools.bench.handwritten`): a plain
   Python loop over the same generator bytes (generated before its clock
   starts), orjson, user state in a dict of in-memory rows, the same features
   and model, output lines built and discarded, no validation and no
   durability. `handwritten-batched` runs cross-user batches of <= 512 events
   (a user at most once per batch, per-user order kept) with one model call
   per batch: the Python limit the dataflow is measured against (every
   variant's `x_handwritten` ratio). `handwritten-per-event` calls the model
   once per event;
3. `dataflow-batch-1`: the same dataflow, state and model with
   `FRAUD_BATCH_MAX=1` (one event per scored batch);
4. the external-call baseline: the same model behind a local HTTP endpoint,
   called once per event by a client that keeps the user state
   (`bytewax_fraud.tools.bench.http`);
5. the same job through Kafka end to end (`kafka-1w`, and `kafka-Np` with N
   processes): the same number of generated events is produced to a fresh
   input topic (timed on its own), then the job reads it with
   `KAFKA_BOOTSTRAP_SERVERS` and `FRAUD_KAFKA_STOP_AT_END=1` and writes
   predictions to a topic. The broker is the one named by
   `KAFKA_BOOTSTRAP_SERVERS`, else an Apache Kafka started here (.ci/install-kafka); with
   neither, the variants are skipped with the reason;
6. a latency-vs-throughput sweep at offered loads of 10% to 100% of the
   1-worker maximum, embedded against external, drawn as a PNG if matplotlib
   is installed (`pip install -e '.[bench]'`).

Throughput is the steady state: the predictions file is polled while the job
runs, and the rate is the lines written between the first and the last
prediction over the time between them. Latencies are the `latency_ms` field of
every prediction (source emission to prediction built; the time an event waits
in the source's batcher, up to `FRAUD_BATCH_TIMEOUT_MS`, is not in it), except
those written in the first `--warmup-s` seconds (first chunk generation, store
opening, first calls). The hand-written loops time their whole loop; their
latency is from the start of an event's batch (its parse) to its line. The
external client times each call from the event's due time. Peak RSS is each
subprocess's `ru_maxrss` from `os.wait4`, summed over the processes of a
variant (the hand-written loops' includes their pre-generated input). Inherited
`FRAUD_*` variables are ignored, and so is `KAFKA_BOOTSTRAP_SERVERS` except for
the Kafka variants.

The Kafka variants' throughput is also the steady state, from the predictions
topic: the messages' CreateTime timestamps (set by the job's producer), the
count after the first one over the time from the first to the last. Their
latencies are the `latency_ms` of every prediction on the topic (source
emission to prediction built, as above; the input is a backlog, so the time an
event waited in the topic is not in it), except those of the first
`--warmup-s` seconds by timestamp.

Run with `python -m bytewax_fraud.tools.bench` (`--quick` for a smoke run, `--help`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.connectors.kafka.config import KafkaConnection
from bytewax_fraud.errors import FraudError
from bytewax_fraud.settings import DEFAULT_MODEL, Settings, load_settings
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.tools.bench.file import format_file, measure_file
from bytewax_fraud.tools.local_broker import BOOTSTRAP_ENV, Broker, BrokerUnavailable, any_broker
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

if TYPE_CHECKING:
    from confluent_kafka import Producer

ROOT = Path(__file__).resolve().parents[3]
WINDOW = int(Settings.model_fields["window"].default)
TARGET_P99_MS = 20.0
#: Largest cross-user batch of the hand-written baseline.
HANDWRITTEN_BATCH = 512
#: What every variant's throughput is compared with (`x_handwritten`).
REFERENCE = "handwritten-batched"
_LATENCY = re.compile(rb'"latency_ms":([^,}]+)')
_RUN_TIMEOUT_S = 900.0
#: Peak RSS of each reaped subprocess, by pid (Popen has no place for its rusage).
_MAXRSS_KIB: dict[int, int] = {}


class BenchError(FraudError):
    """A benchmark run failed; the message carries the subprocess's last output."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures."""

    events: int = 200_000
    users: int = 20_000
    partitions: int = 4
    workers: tuple[int, ...] = (1, 2)
    model: Path = DEFAULT_MODEL
    device: str = "cpu"
    baseline_events: int = 50_000
    http_requests: int = 20_000
    loads: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75, 1.00)
    point_seconds: float = 6.0
    warmup_s: float = 1.0
    seed: int = 0
    threads_variant: bool = True
    skip_http: bool = False
    skip_kafka: bool = False
    #: Offered loads of the Kafka sweep (end-to-end latency through both topics).
    kafka_loads: tuple[float, ...] = (0.50,)
    #: Offered loads of the outside reader's view (`bench_reader`): a fifth and half.
    reader_loads: tuple[float, ...] = (0.20, 0.50)


@dataclass
class Result:
    """One measured variant."""

    name: str
    events: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    peak_rss_mb: float
    offered_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _percentiles(lat_ms: np.ndarray) -> tuple[float, float, float]:
    if len(lat_ms) == 0:
        return (math.nan, math.nan, math.nan)
    p = np.percentile(lat_ms, [50, 99, 99.9])
    return (round(float(p[0]), 3), round(float(p[1]), 3), round(float(p[2]), 3))


def _wait(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[tuple[int | None, int]]:
    """Reap processes with `os.wait4`: (exit code, ru_maxrss in KiB) each, (None, 0) if running.

    A process still running after `deadline` (monotonic), or whose sibling failed,
    is killed.
    """
    failed = any(p.returncode not in (None, 0) for p in procs)
    out: list[tuple[int | None, int]] = []
    for p in procs:
        if p.returncode is not None:
            out.append((p.returncode, _MAXRSS_KIB.get(p.pid, 0)))
            continue
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == 0:
            if failed or time.monotonic() > deadline:
                p.kill()
            out.append((None, 0))
            continue
        p.returncode = os.waitstatus_to_exitcode(status)
        _MAXRSS_KIB[p.pid] = ru.ru_maxrss
        out.append((p.returncode, ru.ru_maxrss))
    return out


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _base_env() -> dict[str, str]:
    # Inherited FRAUD_* settings would change what is measured: only ours apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    # Settings read it too (it would switch the embedded runs to Kafka).
    env.pop(BOOTSTRAP_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _start_processes(
    cmd: list[str], env: dict[str, str], d: Path, processes: int
) -> list[subprocess.Popen[bytes]]:
    """Start `processes` processes of `cmd` as one Bytewax cluster (logs and summaries in `d`)."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(processes):
        penv = dict(env, FRAUD_SUMMARY_FILE=str(d / f"summary-{i}.json"))
        args = cmd + (["-i", str(i), "-a", addresses] if processes > 1 else [])
        with open(d / f"log-{i}.txt", "wb") as log:
            procs.append(
                subprocess.Popen(args, cwd=ROOT, env=penv, stdout=log, stderr=subprocess.STDOUT)
            )
    return procs


def run_dataflow(
    cfg: BenchConfig,
    name: str,
    workdir: Path,
    *,
    events: int,
    processes: int = 1,
    threads: int = 1,
    batch_max: int | None = None,
    rate: float = 0.0,
    extra_env: dict[str, str] | None = None,
) -> Result:
    """Run `dataflows.fraud` as subprocesses on fresh state and measure it."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    state, out = d / "state", d / "out"
    # Created here so that the processes of a cluster do not race to create it.
    ensure_manifest(state, cfg.partitions, WINDOW)
    env = _base_env()
    env.update(
        FRAUD_EVENTS=str(events),
        FRAUD_USERS=str(cfg.users),
        FRAUD_PARTITIONS=str(cfg.partitions),
        FRAUD_SEED=str(cfg.seed),
        FRAUD_MODEL=str(cfg.model),
        FRAUD_DEVICE=cfg.device,
        FRAUD_STATE_DIR=str(state),
        FRAUD_OUTPUT_DIR=str(out),
        FRAUD_STATUS_INTERVAL="0",
        FRAUD_RATE=repr(rate),
    )
    if batch_max is not None:
        env["FRAUD_BATCH_MAX"] = str(batch_max)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
    if threads > 1:
        cmd += ["-w", str(threads)]
    procs = _start_processes(cmd, env, d, processes)
    samples = _poll_predictions(out / "predictions.jsonl", procs)
    codes = _wait(procs, 0.0)
    if any(rc != 0 for rc, _ in codes):
        logs = "\n".join(_tail(d / f"log-{i}.txt") for i in range(processes))
        raise BenchError(f"{name}: bytewax.run exited with {[rc for rc, _ in codes]}:\n{logs}")
    data = (out / "predictions.jsonl").read_bytes()
    lat = np.array(_LATENCY.findall(data)).astype(np.float64)
    if len(lat) != events:
        raise BenchError(f"{name}: expected {events} predictions, found {len(lat)} in {out}")
    skip = _warmup_lines(samples, cfg.warmup_s, events)
    lat = lat[skip:]
    summaries = [json.loads((d / f"summary-{i}.json").read_text()) for i in range(processes)]
    p50, p99, p999 = _percentiles(lat)
    result = Result(
        name=name,
        events=events,
        events_per_s=round(_steady_rate(samples, events, summaries), 1),
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=round(sum(kib for _, kib in codes) / 1024, 1),
        offered_per_s=round(rate, 1),
        extra={
            "processes": processes,
            "threads": threads,
            "batch_max": batch_max or int(Settings.model_fields["batch_max"].default),
            "summary_events_per_s": round(sum(float(s["events_per_s"]) for s in summaries), 1),
            "warmup_skipped": skip,
        },
    )
    shutil.rmtree(d, ignore_errors=True)
    return result


def _poll_predictions(path: Path, procs: list[subprocess.Popen[bytes]]) -> list[tuple[float, int]]:
    """(time, lines written) samples of the predictions file until every process exits."""
    samples: list[tuple[float, int]] = []
    lines = 0
    f = None
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    try:
        while True:
            done = all(rc is not None for rc, _ in _wait(procs, deadline))
            if f is None and path.exists():
                f = open(path, "rb")  # noqa: SIM115 - closed below
            if f is not None:
                n = f.read().count(b"\n")
                if n:
                    lines += n
                    samples.append((time.monotonic(), lines))
            if done:
                return samples
            time.sleep(0.02)  # reading the file costs CPU the job would otherwise get
    finally:
        if f is not None:
            f.close()


def _warmup_lines(samples: list[tuple[float, int]], warmup_s: float, events: int) -> int:
    """Predictions written in the first `warmup_s` after the first one (at most half)."""
    if not samples:
        return 0
    t0 = samples[0][0]
    before = [n for t, n in samples if t - t0 < warmup_s]
    return min(before[-1] if before else 0, events // 2)


def _steady_rate(
    samples: list[tuple[float, int]], events: int, summaries: list[dict[str, Any]]
) -> float:
    """Events/s between the first and the last prediction (the summary's rate if too short)."""
    if len(samples) >= 2:
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if t1 - t0 > 0.05 and n1 > n0:
            return (n1 - n0) / (t1 - t0)
    return sum(float(s["events_per_s"]) for s in summaries)


#: Kafka client settings passed to the Kafka variant's job (where and how to connect).
_KAFKA_PASS_THROUGH = ("FRAUD_KAFKA_PROPERTIES", "FRAUD_KAFKA_CONFIG_FILE")


def produce_paced(
    producer: Producer, topic: str, msgs: list[tuple[bytes | None, bytes]], rate: float
) -> None:
    """Produce `msgs` (key, value) at `rate` messages/s, then flush."""
    t0 = time.monotonic()
    for i, (key, value) in enumerate(msgs):
        due = t0 + i / rate
        while (now := time.monotonic()) < due:
            producer.poll(min(due - now, 0.001))
        while True:
            try:
                producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.001)
    producer.flush()


@contextmanager
def bench_broker(workdir: Path) -> Iterator[tuple[Broker | None, str]]:
    """The Kafka variant's broker and its description, or None and why there is none."""
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(any_broker(workdir / "kafka"))
        except BrokerUnavailable as exc:
            yield None, str(exc)
            return
        where = "Apache Kafka, started here" if broker.process else f"external ({BOOTSTRAP_ENV})"
        yield broker, f"{where} at {broker.bootstrap_servers}"


def _kafka_env(
    cfg: BenchConfig, broker: Broker, prefix: str, t_in: str, t_pred: str, t_dl: str, d: Path
) -> dict[str, str]:
    """The Kafka variants' job environment (fresh state in `d`, stop at the end of the input)."""
    ensure_manifest(d / "state", cfg.partitions, WINDOW)
    env = _base_env()
    env.update({k: os.environ[k] for k in _KAFKA_PASS_THROUGH if k in os.environ})
    env.update(
        {
            BOOTSTRAP_ENV: broker.bootstrap_servers,
            "FRAUD_KAFKA_STOP_AT_END": "1",
            "FRAUD_TOPIC_TRANSACTIONS": t_in,
            "FRAUD_TOPIC_PREDICTIONS": t_pred,
            "FRAUD_TOPIC_DEAD_LETTERS": t_dl,
            # Never created: no model control during the run.
            "FRAUD_TOPIC_CONTROL": f"{prefix}-control",
            "FRAUD_USERS": str(cfg.users),
            "FRAUD_PARTITIONS": str(cfg.partitions),
            "FRAUD_SEED": str(cfg.seed),
            "FRAUD_MODEL": str(cfg.model),
            "FRAUD_DEVICE": cfg.device,
            "FRAUD_STATE_DIR": str(d / "state"),
            "FRAUD_OUTPUT_DIR": str(d / "out"),
            "FRAUD_STATUS_INTERVAL": "0",
        }
    )
    return env


@dataclass(frozen=True)
class KafkaRun:
    """A Kafka variant's own directory and topics, created on the broker."""

    dir: Path
    prefix: str
    t_in: str
    t_pred: str
    t_dl: str
    conn: KafkaConnection


def kafka_run(cfg: BenchConfig, broker: Broker, workdir: Path, name: str, tag: str) -> KafkaRun:
    """Make a variant's directory under `workdir` and its three job topics (`tag` prefixes them)."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    prefix = f"fraud-{tag}-{uuid.uuid4().hex[:8]}"
    t_in, t_pred, t_dl = (f"{prefix}-{t}" for t in ("transactions", "predictions", "dead-letters"))
    s = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers, partitions=cfg.partitions)
    conn = kafka_connection(s)
    create_job_topics(
        admin_client(conn.admin()), cfg.partitions, t_in, t_pred, t_dl, s.kafka_max_message_bytes
    )
    return KafkaRun(d, prefix, t_in, t_pred, t_dl, conn)


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
) -> Result:
    """Produce `events` generated events (or `produced`), run the job on them through Kafka.

    `extra_env` adds settings; with FRAUD_RECOVERY_DIR among them the job runs as
    `python -m bytewax_fraud` (which applies the recovery settings), with its
    directory made under this variant's own.
    """
    run = kafka_run(cfg, broker, workdir, name, "bench")
    d, prefix, t_in, t_pred, t_dl = run.dir, run.prefix, run.t_in, run.t_pred, run.t_dl
    # Generated first, so that the producing rate is the client's and the broker's alone.
    msgs = list(generated(cfg.users, cfg.seed, events)) if produced is None else produced
    t0 = time.monotonic()
    produce(run.conn.producer(), t_in, cfg.partitions, msgs)
    produce_s = time.monotonic() - t0
    del msgs

    env = _kafka_env(cfg, broker, prefix, t_in, t_pred, t_dl, d)
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
    if "FRAUD_RECOVERY_DIR" in env:
        env["FRAUD_RECOVERY_DIR"] = str(d / env["FRAUD_RECOVERY_DIR"])
        cmd = [sys.executable, "-m", "bytewax_fraud"]
        # Process 0 creates the state with its recovery directory; the others wait for it.
        shutil.rmtree(d / "state")
    procs = _start_processes(cmd, env, d, processes)
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    codes = _wait(procs, deadline)
    while any(rc is None for rc, _ in codes):
        time.sleep(0.05)
        codes = _wait(procs, deadline)
    if any(rc != 0 for rc, _ in codes):
        logs = "\n".join(_tail(d / f"log-{i}.txt") for i in range(processes))
        raise BenchError(f"{name}: bytewax.run exited with {[rc for rc, _ in codes]}:\n{logs}")

    ts_ms: list[int] = []
    lat_ms: list[float] = []
    for msg in messages(run.conn.consumer("earliest"), t_pred, cfg.partitions):
        m = _LATENCY.search(msg.value() or b"")
        if m is None:
            raise BenchError(f"{name}: a prediction on {t_pred!r} has no latency_ms")
        ts_ms.append(msg.timestamp()[1])
        lat_ms.append(float(m.group(1)))
    if len(lat_ms) != events:
        raise BenchError(
            f"{name}: expected {events} predictions on {t_pred!r}, found {len(lat_ms)}"
        )
    summaries = [json.loads((d / f"summary-{i}.json").read_text()) for i in range(processes)]
    summary_rate = sum(float(x["events_per_s"]) for x in summaries)
    dead: dict[str, int] = {}
    for x in summaries:
        for k, v in (x["dead_letters"] or {}).items():
            dead[k] = dead.get(k, 0) + int(v)
    order = np.argsort(np.asarray(ts_ms), kind="stable")
    ts = np.asarray(ts_ms, np.int64)[order]
    lat = np.asarray(lat_ms, np.float64)[order]
    rate, skip = _topic_rate(ts, cfg.warmup_s, events, summary_rate)
    p50, p99, p999 = _percentiles(lat[skip:])
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
        },
    )


_PRED_POS = re.compile(rb'"partition":(\d+),"offset":(\d+)')


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
    from confluent_kafka import Producer

    run = kafka_run(cfg, broker, workdir, name.replace("%", "pct"), "bench")
    d, prefix, t_in, t_pred, t_dl = run.dir, run.prefix, run.t_in, run.t_pred, run.t_dl
    conn = run.conn
    admin = admin_client(conn.admin())
    pilot = 200
    msgs = list(generated(cfg.users, cfg.seed, pilot + events))
    env = _kafka_env(cfg, broker, prefix, t_in, t_pred, t_dl, d)
    env.pop("FRAUD_KAFKA_STOP_AT_END")
    cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
    producer = Producer(conn.producer())
    with open(d / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for key, value in msgs[:pilot]:
            producer.produce(t_in, value, key)
        producer.flush()
        _wait_for_messages(conn.consumer("earliest"), t_pred, pilot, proc, d / "log.txt")
        produce_paced(producer, t_in, msgs[pilot:], rate)
        _wait_for_messages(conn.consumer("earliest"), t_pred, pilot + events, proc, d / "log.txt")
    finally:
        if proc.poll() is None:
            proc.terminate()
        codes = _wait([proc], time.monotonic() + 10)
        while codes[0][0] is None:
            time.sleep(0.05)
            codes = _wait([proc], time.monotonic() + 10)
    produced: dict[tuple[int, int], int] = {}
    for msg in messages(conn.consumer("earliest"), t_in, cfg.partitions):
        produced[(int(msg.partition() or 0), int(msg.offset() or 0))] = msg.timestamp()[1]
    lat: list[tuple[int, int]] = []  # (input CreateTime, end-to-end ms)
    in_job: list[float] = []  # the predictions' latency_ms (source emission to prediction)
    for msg in messages(conn.consumer("earliest"), t_pred, cfg.partitions):
        m = _PRED_POS.search(msg.value() or b"")
        if m is None:
            raise BenchError(f"{name}: a prediction on {t_pred!r} has no partition and offset")
        t_made = produced[(int(m.group(1)), int(m.group(2)))]
        lat.append((t_made, msg.timestamp()[1] - t_made))
        inner = _LATENCY.search(msg.value() or b"")
        in_job.append(float(inner.group(1)) if inner else math.nan)
    admin.delete_topics([t_in, t_pred, t_dl], operation_timeout=10)
    lat.sort()
    first = lat[pilot][0] if len(lat) > pilot else 0
    kept = np.asarray([ms for t, ms in lat[pilot:] if t - first >= cfg.warmup_s * 1000.0])
    made = np.asarray([t for t, _ in lat[pilot:]], np.int64)
    done = np.sort(made + np.asarray([ms for _, ms in lat[pilot:]], np.int64))
    span = max(int(done[-1] - done[0]), 1) / 1000.0 if len(done) else math.nan
    p50, p99, p999 = _percentiles(kept.astype(np.float64))
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
            "in_job_p50_p99_ms": _percentiles(np.asarray(in_job[pilot:], np.float64))[:2],
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

    from confluent_kafka import Consumer, Producer, TopicPartition

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

    deadline = time.monotonic() + _RUN_TIMEOUT_S
    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = Producer(conn.producer())
    produce_paced(producer, topic, msgs, rate)
    deadline = time.monotonic() + 30.0
    done.set()
    reader.join()
    consumer.close()
    admin.delete_topics([topic, f"{topic}-p", f"{topic}-d"], operation_timeout=10)
    got.sort()
    first = got[0][0] if got else 0
    lat = np.asarray([c - t for t, c in got if t - first >= cfg.warmup_s * 1000.0], np.float64)
    p50, p99, p999 = _percentiles(lat)
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


def _wait_for_messages(
    config: dict[str, Any], topic: str, want: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Read `topic` from the beginning until it holds `want` messages, while the job runs."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**config, "group.id": "bytewax-fraud-bench", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got = 0
        deadline = time.monotonic() + _RUN_TIMEOUT_S
        while got < want:
            if proc.poll() is not None:
                raise BenchError(f"the job exited with {proc.returncode}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{topic}: {got} of {want} predictions arrived in time")
            got += sum(1 for m in c.consume(1000, 0.05) if m.error() is None)
    finally:
        c.close()


def _topic_rate(
    ts_ms: np.ndarray, warmup_s: float, events: int, fallback: float
) -> tuple[float, int]:
    """(events/s, predictions in the warm-up) from sorted message timestamps in ms.

    The rate counts the messages after the first timestamp over the time to the
    last one (the job summary's rate if that span is under 50 ms).
    """
    t0, t1 = int(ts_ms[0]), int(ts_ms[-1])
    rate = fallback
    if t1 - t0 >= 50:
        rate = int(np.count_nonzero(ts_ms > t0)) / ((t1 - t0) / 1000.0)
    skip = int(np.searchsorted(ts_ms, t0 + warmup_s * 1000.0, side="left"))
    return rate, min(skip, events // 2)


def run_handwritten(
    cfg: BenchConfig,
    name: str,
    workdir: Path,
    *,
    mode: str,
    events: int,
    extra_args: tuple[str, ...] = (),
) -> Result:
    """Run a hand-written loop (`bytewax_fraud.tools.bench.handwritten`) as a subprocess."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    out = d / "result.json"
    args = [sys.executable, "-m", "bytewax_fraud.tools.bench.handwritten", "--mode", mode]
    args += ["--events", str(events), "--users", str(cfg.users)]
    args += ["--partitions", str(cfg.partitions), "--seed", str(cfg.seed)]
    args += ["--model", str(cfg.model), "--device", cfg.device, "--out", str(out)]
    args += ["--batch-max", str(HANDWRITTEN_BATCH), *extra_args]
    with open(d / "log.txt", "wb") as log:
        proc = subprocess.Popen(args, cwd=ROOT, env=_base_env(), stdout=log, stderr=log)
    deadline = time.monotonic() + _RUN_TIMEOUT_S
    while (codes := _wait([proc], deadline))[0][0] is None:
        time.sleep(0.02)
    if codes[0][0] != 0:
        raise BenchError(f"{name}: the hand-written loop failed:\n{_tail(d / 'log.txt')}")
    res = json.loads(out.read_text())
    p50, p99, p999 = _percentiles(np.asarray(res["latencies_ms"], np.float64))
    shutil.rmtree(d, ignore_errors=True)
    return Result(
        name=name,
        events=int(res["events"]),
        events_per_s=round(float(res["events_per_s"]), 1),
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=round(codes[0][1] / 1024, 1),
        extra={
            "mode": mode,
            "batch_max": HANDWRITTEN_BATCH if mode == "batched" else 1,
            "model_calls": res["batches"],
            "input": "generator bytes, generated before the clock starts",
            "pregenerate_s": res["pregenerate_s"],
        },
    )


def run_http(cfg: BenchConfig, name: str, workdir: Path, *, requests: int, rate: float) -> Result:
    """Run the model server and the stateful client as subprocesses and measure them."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    env = _base_env()
    mod = [sys.executable, "-m", "bytewax_fraud.tools.bench.http"]
    server_log = open(d / "server.txt", "wb")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [*mod, "serve", "--model", str(cfg.model), "--device", cfg.device],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=server_log,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode().split()
        if len(line) != 4 or line[0] != "PORT":
            server.kill()
            server.wait()
            raise BenchError(f"{name}: the model server did not start:\n{_tail(d / 'server.txt')}")
        port, hidden = line[1], line[3]
        out = d / "client.json"
        args = [*mod, "client", "--port", port, "--hidden", hidden, "--events", str(requests)]
        args += ["--users", str(cfg.users), "--partitions", str(cfg.partitions)]
        args += ["--seed", str(cfg.seed), "--rate", repr(rate), "--out", str(out)]
        args += ["--warmup-s", repr(cfg.warmup_s)]
        with open(d / "client.txt", "wb") as log:
            client = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + _RUN_TIMEOUT_S
        while (codes := _wait([client], deadline))[0][0] is None:
            time.sleep(0.05)
    finally:
        if server.returncode is None:
            server.terminate()
        while (s_codes := _wait([server], time.monotonic() + 10))[0][0] is None:
            time.sleep(0.01)
        server_kib = s_codes[0][1]
        server_log.close()
    if codes[0][0] != 0:
        raise BenchError(f"{name}: the HTTP client failed:\n{_tail(d / 'client.txt')}")
    res = json.loads(out.read_text())
    p50, p99, p999 = _percentiles(np.asarray(res["latencies_ms"], np.float64))
    shutil.rmtree(d, ignore_errors=True)
    return Result(
        name=name,
        events=requests,
        events_per_s=round(float(res["events_per_s"]), 1),
        p50_ms=p50,
        p99_ms=p99,
        p999_ms=p999,
        peak_rss_mb=round((codes[0][1] + server_kib) / 1024, 1),
        offered_per_s=round(rate, 1),
        extra={
            "server_rss_mb": round(server_kib / 1024, 1),
            "users": res["users"],
            "warmup_skipped": res["warmup_skipped"],
        },
    )


def hardware() -> dict[str, Any]:
    """The machine the figures were taken on."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break

    def version(*names: str) -> str:
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return "?"

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "onnxruntime": version("onnxruntime-gpu", "onnxruntime"),
        "rocksdict": version("rocksdict"),
    }


def measure(cfg: BenchConfig, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Run every variant and the load sweep; return the report as a JSON-ready dict."""
    variants: list[Result] = []

    def add(r: Result) -> Result:
        log(f"  {r.name}: {r.events_per_s:,.0f} ev/s, p99 {r.p99_ms} ms")
        variants.append(r)
        return r

    one = None
    for w in cfg.workers:
        if w == 1:
            one = add(run_dataflow(cfg, "embedded-1w", workdir, events=cfg.events))
            continue
        add(run_dataflow(cfg, f"embedded-{w}p", workdir, events=cfg.events, processes=w))
        if cfg.threads_variant:
            add(run_dataflow(cfg, f"embedded-{w}t", workdir, events=cfg.events, threads=w))
    if one is None:
        one = add(run_dataflow(cfg, "embedded-1w", workdir, events=cfg.events))
    reference = add(run_handwritten(cfg, REFERENCE, workdir, mode="batched", events=cfg.events))
    add(
        run_handwritten(
            cfg, "handwritten-per-event", workdir, mode="per-event", events=cfg.baseline_events
        )
    )
    add(run_dataflow(cfg, "dataflow-batch-1", workdir, events=cfg.baseline_events, batch_max=1))
    external = None
    if not cfg.skip_http:
        external = add(run_http(cfg, "external-http", workdir, requests=cfg.http_requests, rate=0))
    kafka: dict[str, Any] = {"ran": False, "reason": "--skip-kafka"}
    if not cfg.skip_kafka:
        with bench_broker(workdir) as (broker, where):
            if broker is None:
                kafka["reason"] = where
                log(f"  kafka-1w: skipped: {where}")
            else:
                r = add(run_kafka(cfg, "kafka-1w", workdir, broker, events=cfg.events))
                kafka = {"ran": True, "broker": where, **r.extra}
                for w in cfg.workers:
                    if w > 1:
                        name = f"kafka-{w}p"
                        add(run_kafka(cfg, name, workdir, broker, events=cfg.events, processes=w))

    sweep: list[Result] = []
    top = one.events_per_s
    for frac in cfg.loads:
        rate = frac * top
        n = max(int(rate * cfg.point_seconds), 50 * cfg.partitions)
        r = run_dataflow(cfg, f"embedded-1w@{frac:.0%}", workdir, events=n, rate=rate)
        r.extra["load"] = frac
        sweep.append(add(r))
        if not cfg.skip_http:
            h = run_http(
                cfg, f"external@{frac:.0%}", workdir, requests=min(n, cfg.http_requests), rate=rate
            )
            h.extra["load"] = frac
            sweep.append(add(h))
    if kafka["ran"] and cfg.kafka_loads:
        with bench_broker(workdir) as (broker, _where):
            assert broker is not None
            for frac in cfg.kafka_loads:
                rate = frac * top
                n = max(int(rate * cfg.point_seconds), 50 * cfg.partitions)
                name = f"kafka-1w@{frac:.0%}"
                k = run_kafka_paced(cfg, name, workdir, broker, events=n, rate=rate)
                k.extra["load"] = frac
                sweep.append(add(k))
                f = run_broker_floor(cfg, f"broker-only@{frac:.0%}", broker, events=n, rate=rate)
                f.extra["load"] = frac
                sweep.append(add(f))
            if cfg.reader_loads:
                from bytewax_fraud.tools.bench.reader import measure_reader  # imports this

                kafka["outside_reader"] = measure_reader(cfg, workdir, broker, top, log)
    if external is not None:
        # The external endpoint at shares of its own maximum: its latency when not saturated.
        for frac in cfg.loads:
            rate = frac * external.events_per_s
            n = min(max(int(rate * cfg.point_seconds), 100), cfg.http_requests)
            h = run_http(cfg, f"external-own@{frac:.0%}", workdir, requests=n, rate=rate)
            h.extra["load"] = frac
            sweep.append(add(h))

    for r in variants:
        if r in sweep:
            continue
        r.extra["x_handwritten"] = round(r.events_per_s / reference.events_per_s, 3)
        if external is not None:
            r.extra["x_external"] = round(r.events_per_s / external.events_per_s, 2)
    at_half = {r.name.split("@")[0]: r.p99_ms for r in sweep if math.isclose(r.extra["load"], 0.5)}
    plain = [r for r in variants if r not in sweep]
    return {
        "hardware": hardware(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "variants": {r.name: asdict(r) for r in plain},
        "ratios": {
            "reference": REFERENCE,
            "x_handwritten": {r.name: r.extra["x_handwritten"] for r in plain},
            "targets": ratio_targets({r.name: r.events_per_s for r in plain}, cfg.workers),
        },
        "kafka": kafka,
        "file_input": measure_file(cfg, workdir, log),
        "load_sweep": {
            "max_events_per_s": top,
            "points": [asdict(r) for r in sweep],
            "p99_ms_at_50pct": at_half,
            "target_p99_ms": TARGET_P99_MS,
        },
    }


def ratio_targets(rates: dict[str, float], workers: tuple[int, ...]) -> list[dict[str, Any]]:
    """The issue's throughput targets, each with its measured ratio and whether it is met."""
    ref = rates.get(REFERENCE)
    out: list[dict[str, Any]] = []

    def target(what: str, num: str, den: str | None, at_least: float) -> None:
        base = ref if den is None else rates.get(den)
        if num in rates and base:
            ratio = round(rates[num] / base, 3)
            out.append(
                {"target": what, "ratio": ratio, "at_least": at_least, "met": ratio >= at_least}
            )

    target(f"embedded-1w / {REFERENCE}", "embedded-1w", None, 1.0)
    target(f"kafka-1w / {REFERENCE}", "kafka-1w", None, 0.8)
    for w in workers:
        if w > 1:
            target(f"embedded-{w}p / embedded-1w", f"embedded-{w}p", "embedded-1w", 0.9 * w)
            target(f"kafka-{w}p / kafka-1w (reported)", f"kafka-{w}p", "kafka-1w", 0.0)
    return out


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as readable tables."""
    hw, st = report["hardware"], report["settings"]
    out = [
        f"hardware: {hw['nproc']} cores usable ({hw['cpu_count']} online), {hw['cpu_model']},"
        f" {hw['memory']}; {hw['platform']}",
        f"software: python {hw['python']}, bytewax {hw['bytewax']}, onnxruntime"
        f" {hw['onnxruntime']}, rocksdict {hw['rocksdict']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in st.items()),
        "",
        f"{'variant':<22}{'events':>9}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}{'RSS MB':>9}{'x hw-batch':>11}{'x extern':>10}",
    ]
    for r in report["variants"].values():
        e = r["extra"]
        out.append(
            f"{r['name']:<22}{r['events']:>9,}{r['events_per_s']:>11,.0f}{_fmt(r['p50_ms']):>9}"
            f"{_fmt(r['p99_ms']):>9}{_fmt(r['p999_ms']):>10}{r['peak_rss_mb']:>9,.0f}"
            f"{_fmt(e.get('x_handwritten', math.nan)):>11}"
            f"{_fmt(e.get('x_external', math.nan)):>10}"
        )
    out += format_file(report.get("file_input"))
    k = report.get("kafka", {})
    if k.get("ran"):
        out.append(
            f"kafka-1w: broker {k['broker']}; produced {report['variants']['kafka-1w']['events']:,}"
            f" events in {k['produce_s']:.2f} s ({k['produce_msg_per_s']:,.0f} msg/s); events/s"
            f" from the {k['rate_from']} (job summary, start to end:"
            f" {k['summary_events_per_s']:,.0f} ev/s); dead letters {k['dead_letters'] or 0}"
        )
    elif k:
        out.append(f"kafka-1w: skipped ({k['reason']})")
    for t in report.get("ratios", {}).get("targets", []):
        verdict = ("met" if t["met"] else "MISSED") if t["at_least"] else "reported"
        goal = f" (target >= {t['at_least']:.1f}: {verdict})" if t["at_least"] else ""
        out.append(f"ratio {t['target']}: {t['ratio']:.2f}{goal}")
    sw = report["load_sweep"]
    out += [
        "",
        f"latency vs throughput (offered load as a share of {sw['max_events_per_s']:,.0f} ev/s,"
        " the 1-worker maximum; external-own: of the external baseline's maximum; kafka-1w:"
        " latency from the input message's CreateTime to the prediction's; broker-only: the"
        " same messages produced and consumed with no job, the broker's floor)",
        f"{'system':<16}{'load':>6}{'offered/s':>11}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>10}"
        f"{'p99.9 ms':>10}",
    ]
    for r in sw["points"]:
        mark = "  <- 50%" if math.isclose(r["extra"]["load"], 0.5) else ""
        out.append(
            f"{r['name'].split('@')[0]:<16}{r['extra']['load']:>6.0%}{r['offered_per_s']:>11,.0f}"
            f"{r['events_per_s']:>12,.0f}{_fmt(r['p50_ms']):>9}{_fmt(r['p99_ms']):>10}"
            f"{_fmt(r['p999_ms']):>10}{mark}"
        )
    for system, p99 in sw["p99_ms_at_50pct"].items():
        verdict = "met" if p99 < sw["target_p99_ms"] else "MISSED"
        out.append(
            f"p99 at 50% of max, {system}: {_fmt(p99)} ms"
            f" (target < {sw['target_p99_ms']:.0f} ms: {verdict})"
        )
    reader = report["kafka"].get("outside_reader")
    if reader:
        from bytewax_fraud.tools.bench.reader import format_reader  # imports this module

        out += ["", *format_reader(reader)]
    return "\n".join(out)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Draw p50/p99 latency against achieved throughput; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sw = report["load_sweep"]
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {
        "embedded-1w": "tab:blue",
        "kafka-1w": "tab:green",
        "broker-only": "tab:gray",
        "external": "tab:red",
        "external-own": "tab:orange",
    }
    labels = {
        "embedded-1w": "embedded (1 worker)",
        "kafka-1w": "Kafka end to end (1 worker)",
        "broker-only": "broker alone (produce -> consume)",
        "external": "external HTTP",
        "external-own": "external HTTP, own max",
    }
    for system, color in styles.items():
        pts = [r for r in sw["points"] if r["name"].split("@")[0] == system]
        if not pts:
            continue
        x = [r["events_per_s"] for r in pts]
        label = labels[system]
        ax.plot(x, [r["p50_ms"] for r in pts], "o-", color=color, label=f"{label} p50")
        ax.plot(x, [r["p99_ms"] for r in pts], "s--", color=color, label=f"{label} p99")
        for r in pts:
            if math.isclose(r["extra"]["load"], 0.5):
                ax.annotate(
                    f"p99 @50%: {r['p99_ms']:.1f} ms",
                    (r["events_per_s"], r["p99_ms"]),
                    textcoords="offset points",
                    xytext=(8, 8),
                    color=color,
                )
                ax.plot([r["events_per_s"]], [r["p99_ms"]], "*", ms=14, color=color)
    reader = report["kafka"].get("outside_reader") or {}
    reader_styles = {
        "broker": ("black", "broker alone"),
        "alo": ("tab:green", "Kafka at-least-once"),
        "eos": ("tab:purple", "Kafka exactly-once"),
    }
    for variant, (color, label) in reader_styles.items():
        pts = [r for r in reader.get("points", []) if r["variant"] == variant]
        if pts:
            x = [r["offered_per_s"] for r in pts]
            ax.plot(x, [r["p99_ms"] for r in pts], "^-.", color=color, label=f"{label}, reader p99")
    ax.axhline(sw["target_p99_ms"], color="gray", ls=":", label="p99 target (20 ms)")
    ax.margins(y=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved throughput (events/s)")
    ax.set_ylabel("latency (ms)")
    hw = report["hardware"]
    ax.set_title(f"Latency vs throughput ({hw['nproc']} cores, {hw['cpu_model']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


QUICK = {
    "events": 20_000,
    "users": 2_000,
    "baseline_events": 5_000,
    "http_requests": 2_000,
    "loads": (0.5, 1.0),
    "point_seconds": 1.0,
    "warmup_s": 0.25,
    "reader_loads": (0.5,),
}


def parse_args(argv: list[str] | None) -> tuple[BenchConfig, argparse.Namespace]:
    """The benchmark configuration from the command line."""
    d = BenchConfig()
    ap = argparse.ArgumentParser(
        prog="python -m bytewax_fraud.tools.bench", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--events", type=int, help=f"events per embedded run (default {d.events})")
    ap.add_argument("--users", type=int, help=f"generated users (default {d.users})")
    ap.add_argument("--partitions", type=int, default=d.partitions)
    ap.add_argument("--workers", default="1,2", help="worker counts to run (default 1,2)")
    ap.add_argument("--model", type=Path, default=d.model, help="ONNX model (the contract's)")
    ap.add_argument("--device", choices=["cpu", "cuda", "auto"], default=d.device)
    ap.add_argument(
        "--baseline-events",
        type=int,
        help="events of the per-event baselines (handwritten-per-event, dataflow-batch-1)",
    )
    ap.add_argument("--http-requests", type=int, help="requests of the external baseline")
    ap.add_argument("--loads", help="offered loads as fractions of the max (default 0.1,...,1)")
    ap.add_argument("--point-seconds", type=float, help="length of each load point's run")
    ap.add_argument(
        "--warmup-s", type=float, help="latencies of the first seconds of a run are not counted"
    )
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--no-threads", action="store_true", help="skip the -w N thread variant")
    ap.add_argument("--skip-http", action="store_true", help="skip the external baseline")
    ap.add_argument(
        "--skip-kafka",
        action="store_true",
        help="skip the Kafka end-to-end variant (it uses KAFKA_BOOTSTRAP_SERVERS, else starts"
        " an Apache Kafka from .ci/install-kafka, else is skipped)",
    )
    ap.add_argument("--quick", action="store_true", help="small smoke configuration")
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    ap.add_argument("--plot", type=Path, help="draw the latency-vs-throughput PNG here")
    ap.add_argument("--workdir", type=Path, help="where temporary state and outputs go")
    a = ap.parse_args(argv)
    base: dict[str, Any] = dict(QUICK) if a.quick else {}
    for k in ("events", "users", "baseline_events", "http_requests", "point_seconds", "warmup_s"):
        if getattr(a, k) is not None:
            base[k] = getattr(a, k)
    if a.loads:
        base["loads"] = tuple(float(x) for x in a.loads.split(","))
    workers = tuple(int(x) for x in a.workers.split(","))
    if any(w < 1 for w in workers) or any(v <= 0 for v in base.get("loads", d.loads)):
        ap.error("--workers and --loads must be positive")
    cfg = BenchConfig(
        **base,
        partitions=a.partitions,
        workers=workers,
        model=a.model.resolve(),
        device=a.device,
        seed=a.seed,
        threads_variant=not a.no_threads,
        skip_http=a.skip_http,
        skip_kafka=a.skip_kafka,
    )
    return cfg, a


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, write the JSON and the plot."""
    cfg, a = parse_args(argv)
    hw = hardware()
    print(f"benchmark on {hw['nproc']} cores ({hw['cpu_model']}); model {cfg.model.name}")
    if a.workdir is not None:
        a.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fraud-bench-", dir=a.workdir) as tmp:
        report = measure(cfg, Path(tmp))
    print()
    print(format_report(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2, allow_nan=True) + "\n")
        print(f"\nJSON report: {a.json}")
    if a.plot:
        if plot(report, a.plot):
            print(f"plot: {a.plot}")
        else:
            print("note: matplotlib is not installed, no plot drawn (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
