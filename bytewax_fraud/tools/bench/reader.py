"""Latency as an outside reader sees it: a paced producer, the job, a consumer in its own process.

The producer stamps each event with its wall-clock time just before handing it
to librdkafka (kept here, by the event's input partition and offset, which a
single idempotent producer on a fresh topic determines). A reader in a process
of its own consumes the predictions topic and stamps each message with its
wall-clock receive time; a prediction names its input's partition and offset,
so its latency is the receive time minus that event's stamp, per message, in
microseconds. The reader waits in `poll`, which returns as soon as a message is
there, and then drains what else has arrived without waiting, so no polling period
or batch size biases the figures.

The broker alone is measured the same way: the reader reads the input topic
itself, with no job in between. Rates are fractions of the 1-worker maximum,
measured first on a backlog (`kafka.run_kafka`) unless `--max-rate` gives it.

    python -m bytewax_fraud.tools.bench.reader --loads 0.2,0.5 --json out.json

`--job-root DIR` runs the job from another checkout (a back-to-back A/B of two
versions on one broker and one machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.settings import load_settings
from bytewax_fraud.tools.bench.broker import (
    bench_broker,
    input_producer,
    kafka_env,
    kafka_run,
    produce_paced,
    wait_for_messages,
)
from bytewax_fraud.tools.bench.config import ROOT, RUN_TIMEOUT_S, BenchConfig, BenchError
from bytewax_fraud.tools.bench.kafka import run_kafka
from bytewax_fraud.tools.bench.runner import PRED_POS, cpu_seconds, tail
from bytewax_fraud.tools.local_broker import Broker
from bytewax_fraud.tools.produce import generated

_PILOT = 200
#: This checkout (the reader runs from it even where `--job-root` names another).
_OWN_ROOT = ROOT
#: What is measured: the broker alone; the job at-least-once without recovery (`alo`,
#: `python -m bytewax.run dataflows.fraud`) and with it (`alo-r`: `python -m bytewax_fraud`
#: with a recovery directory and the default 5 s snapshots, as `make run` runs it; each
#: snapshot pauses the input while the epoch drains); the job exactly-once (the same, with
#: transactions committed in the background every `commit_interval`, read read_committed);
#: and the broker alone, at-least-once and exactly-once on topics of one partition
#: (`broker-1p`, `alo-1p`, `eos-1p`): each partition a worker owns is one scoring call per
#: read, one consumer and one transaction.
VARIANTS = ("broker", "alo", "alo-r", "eos", "broker-1p", "alo-1p", "eos-1p")
#: The variants that measure the broker alone, and which one each job variant is set against.
BROKERS = ("broker", "broker-1p")


def baseline(variant: str) -> str:
    """The broker-alone variant on topics like `variant`'s."""
    return "broker-1p" if variant.endswith("-1p") else "broker"


#: A prediction's own latency: its input's read by the job -> its line built (ms).
JOB_MS = re.compile(rb'"latency_ms":([-+.0-9eE]+)')
#: Columns of the reader's rows.
COLUMNS = ("input partition", "input offset", "receive s", "message CreateTime s", "job ms")


def read(
    bootstrap: str, topic: str, partitions: int, count: int, out: Path, committed: bool
) -> None:
    """The reader process: consume `count` messages of `topic`, record their receive times.

    Writes `out` as an [n, 5] float64 array (`COLUMNS`): input partition, input offset,
    receive time, the message's CreateTime (epoch seconds, ms resolution), and for a
    prediction the job's own `latency_ms` (NaN for the input topic). A prediction
    names its input (`"partition"`, `"offset"`); a message of the input topic is its
    own input.
    """
    from confluent_kafka import Consumer, TopicPartition

    s = load_settings(kafka_bootstrap_servers=bootstrap, partitions=partitions)
    config = {**kafka_connection(s).consumer("earliest"), "group.id": "bytewax-fraud-reader"}
    if committed:
        config["isolation.level"] = "read_committed"
    c = Consumer(config)
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    rows: list[tuple[int, int, float, float, float]] = []
    #: Predictions as received (value, receive time, CreateTime ms): they are parsed after
    #: the run, so that parsing a burst (an exactly-once commit makes a whole epoch visible
    #: at once: ~27k messages at 26.7k/s, ~3 us each to parse) does not delay the next
    #: receive stamps. Parsed on the way, the last of such a burst were stamped ~80 ms late.
    received: list[tuple[bytes | None, float, int]] = []
    own = not topic.endswith("-predictions")
    nan = float("nan")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while len(rows) + len(received) < count and time.monotonic() < deadline:
        # `poll` returns as soon as one message is there (`consume(n, t)` would wait for n
        # or t: a bias of up to t); what else has arrived is drained without waiting.
        first = c.poll(0.1)
        now = time.time()
        if first is None:
            continue
        batch = [first, *c.consume(1000, 0)]
        for m in batch:
            if m.error() is not None:
                continue
            if own:
                p, o = int(m.partition() or 0), int(m.offset() or 0)
                rows.append((p, o, now, m.timestamp()[1] / 1000.0, nan))
            else:
                received.append((m.value(), now, m.timestamp()[1]))
    c.close()
    for value, at, created in received:
        pos = PRED_POS.search(value or b"")
        if pos is not None:
            job = JOB_MS.search(value or b"")
            job_ms = float(job.group(1)) if job is not None else nan
            rows.append((int(pos.group(1)), int(pos.group(2)), at, created / 1000.0, job_ms))
    np.save(out, np.asarray(rows, np.float64).reshape(-1, len(COLUMNS)))


def counted(
    keys: list[bytes | None],
    stamps: list[float],
    rows: np.ndarray,
    partitions: int,
    pilot: int,
    warmup_s: float,
) -> tuple[np.ndarray, np.ndarray]:
    """The reader's rows of counted events, and each one's produce stamp.

    Args:
        keys: The key of every produced message, in produce order (pilot first).
        stamps: The wall-clock stamp of each message after the pilot.
        rows: The reader's rows (`COLUMNS`; the first three suffice).
        partitions: The input topic's partition count.
        pilot: Messages produced before the paced ones (not counted).
        warmup_s: Events stamped in the first this many seconds are not counted.

    One producer writes a fresh topic, so a message's offset is the number of
    earlier messages to its partition (Kafka's partition of its key).
    """
    sent: dict[tuple[int, int], float] = {}
    nxt = [0] * partitions
    for i, key in enumerate(keys):
        p = partition_for((key or b"").decode(), partitions)
        if i >= pilot:
            sent[(p, nxt[p])] = stamps[i - pilot]
        nxt[p] += 1
    first = min(stamps)
    idx, at = [], []
    for i, (p, o) in enumerate(rows[:, :2].tolist()):
        t = sent.get((int(p), int(o)))
        if t is not None and t - first >= warmup_s:
            idx.append(i)
            at.append(t)
    return rows[np.asarray(idx, np.intp)].reshape(-1, rows.shape[1]), np.asarray(at, np.float64)


def segments_ms(got: np.ndarray, at: np.ndarray) -> dict[str, list[float]]:
    """Where a prediction's time went, p50 and p99 in ms of each part (they add up per message).

    - `to_job`: produced -> read by the job, plus its hand-off to the sink after the
      line is built (its CreateTime minus its `latency_ms`, minus the stamp);
    - `in_job`: read -> line built (the prediction's `latency_ms`);
    - `to_reader`: produced by the job -> received by the reader (CreateTime has ms
      resolution: each of the parts around it is off by up to 1 ms).
    """
    parts = {
        "to_job": (got[:, 3] - got[:, 4] / 1000.0 - at) * 1000.0,
        "in_job": got[:, 4],
        "to_reader": (got[:, 2] - got[:, 3]) * 1000.0,
    }
    return {
        name: [round(float(np.percentile(v, q)), 1) for q in (50, 99)]
        for name, v in parts.items()
        if v.size and not np.isnan(v).any()
    }


def point(
    broker: Broker,
    cfg: BenchConfig,
    workdir: Path,
    variant: str,
    rate: float,
    seconds: float,
    job_root: Path,
    commit_interval: float,
    job_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One variant (see `VARIANTS`) at one rate: the reader's latency percentiles."""
    kind = variant.removesuffix("-1p")
    if kind != variant:
        cfg = dataclasses.replace(cfg, partitions=1)
    run = kafka_run(cfg, broker, workdir, f"reader-{variant}", "reader")
    d, prefix, t_in, t_pred, t_dl = run.dir, run.prefix, run.t_in, run.t_pred, run.t_dl
    conn = run.conn
    admin = admin_client(conn.admin())
    events = max(int(rate * seconds), 50 * cfg.partitions)
    msgs = list(generated(cfg.users, cfg.seed, _PILOT + events))
    producer = input_producer(conn)
    job = None
    if variant not in BROKERS:
        env = kafka_env(cfg, broker, prefix, t_in, t_pred, t_dl, d)
        env.pop("FRAUD_KAFKA_STOP_AT_END")
        env["PYTHONPATH"] = str(job_root)
        cmd = [sys.executable, "-m", "bytewax.run", "dataflows.fraud"]
        if kind in ("alo-r", "eos"):  # as `make run` runs it: resumable, with snapshots
            env["FRAUD_RECOVERY_DIR"] = str(d / "recovery")
            cmd = [sys.executable, "-m", "bytewax_fraud"]
            (d / "state").rename(d / "state-unused")
        if kind == "eos":  # transactions committed every interval, in the background
            env["FRAUD_KAFKA_DELIVERY"] = "exactly-once"
            env["FRAUD_KAFKA_COMMIT_INTERVAL"] = str(commit_interval)
        env.update(job_env or {})
        with open(d / "log.txt", "wb") as log:
            job = subprocess.Popen(cmd, cwd=job_root, env=env, stdout=log, stderr=subprocess.STDOUT)
    out = d / "reader.npy"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bytewax_fraud.tools.bench.reader",
            "read",
            broker.bootstrap_servers,
            t_pred if job else t_in,
            str(cfg.partitions),
            str(_PILOT + events),
            str(out),
            "1" if kind == "eos" else "0",
        ],
        env={**os.environ, "PYTHONPATH": str(_OWN_ROOT)},
    )
    try:
        for key, value in msgs[:_PILOT]:  # start-up over before the clock starts
            producer.produce(t_in, value, key)
        producer.flush()
        if job is not None:
            wait_for_messages(conn.consumer("earliest"), t_pred, _PILOT, job, d / "log.txt")
        time.sleep(1.0)
        procs = {"job": job, "broker": broker.process, "reader": reader}
        before = cpu_reading(procs)
        stamps = produce_paced(producer, t_in, msgs[_PILOT:], rate)
        cores = cores_between(before, cpu_reading(procs))
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while reader.poll() is None and time.monotonic() < deadline:
            if job is not None and job.poll() is not None:
                log_tail = tail(d / "log.txt")
                raise BenchError(f"{variant}: the job exited with {job.returncode}:\n{log_tail}")
            time.sleep(0.05)
        if reader.poll() != 0:
            raise BenchError(f"{variant}: the reader exited with {reader.returncode}")
    finally:
        for proc in (reader, job):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
    admin.delete_topics([t_in, t_pred, t_dl], operation_timeout=10)
    rows = np.load(out)
    shutil.rmtree(d, ignore_errors=True)
    got, at = counted([k for k, _ in msgs], stamps, rows, cfg.partitions, _PILOT, cfg.warmup_s)
    lat = (got[:, 2] - at) * 1000.0
    p50, p99, p999 = (round(float(np.percentile(lat, q)), 1) for q in (50, 99, 99.9))
    return {
        "variant": variant,
        "partitions": cfg.partitions,
        "offered_per_s": round(rate, 1),
        "events": events,
        "received": int(rows.shape[0]),
        "counted": int(lat.size),
        "p50_ms": p50,
        "p99_ms": p99,
        "p999_ms": p999,
        "max_ms": round(float(lat.max()), 1),
        "segments_ms": segments_ms(got, at) if job is not None else {},
        # The prediction's CreateTime minus the stamp: input CreateTime -> prediction
        # CreateTime (the input's is set in `produce()`, just after the stamp), ms resolution.
        "to_createtime_ms": (
            [round(float(np.percentile((got[:, 3] - at) * 1000.0, q)), 1) for q in (50, 99)]
            if job is not None
            else []
        ),
        "cpu_cores": cores,
    }


def cpu_reading(procs: dict[str, subprocess.Popen[bytes] | None]) -> dict[str, float]:
    """CPU seconds so far of each running process, this one (the producer) included; and now."""
    out = {"producer": time.process_time(), "wall": time.monotonic()}
    for name, proc in procs.items():
        used = cpu_seconds(proc.pid) if proc is not None else None
        if used is not None:
            out[name] = used
    return out


def cores_between(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores each process used on average between two `cpu_reading`s (and their sum)."""
    wall = after["wall"] - before["wall"]
    cores = {
        k: round((after[k] - v) / wall, 2) for k, v in before.items() if k in after and k != "wall"
    }
    cores["all"] = round(sum(cores.values()), 2)
    return cores


def warm_up(
    broker: Broker,
    run: Callable[[str], None],
    variants: tuple[str, ...],
    settled: float,
    max_s: float,
) -> dict[str, Any]:
    """Uncounted points (the broker alone, then the first job variant) until the broker is warm.

    A broker fresh from start compiles its hot paths for a minute or two: its JIT
    compilers took 0.55 and 0.42 of a core in the first two 10 s points at half load,
    and 1-7 % in the next four, and on two cores each burst held the job's worker back
    (reader p99 at 50 %: 449 ms in the first job point, 46-169 ms once settled). Production
    brokers are warm, so the rounds repeat until the compilers used less than `settled`
    of a core over one, or `max_s` has passed (a broker not started here: one round).
    """
    warm = ["broker", *[v for v in variants if v not in BROKERS][:1]]
    start = time.monotonic()
    rounds = 0
    while True:
        before, t0 = broker.jit_cpu_seconds(), time.monotonic()
        for v in warm:
            run(v)
        rounds += 1
        after, t1 = broker.jit_cpu_seconds(), time.monotonic()
        share = None if before is None or after is None else (after - before) / (t1 - t0)
        if share is None or share < settled or t1 - start >= max_s:
            break
    took = f"{rounds} round(s) of {', '.join(warm)}, {t1 - start:.0f} s, not counted"
    if share is None:
        text = f"warm-up: {took} (the broker's JIT cannot be watched: not started here)"
    else:
        state = "settled" if share < settled else f"still compiling after {max_s:.0f} s"
        text = f"warm-up: {took}; the broker's JIT {state} ({share:.1%} of a core in the last)"
    return {"rounds": rounds, "seconds": round(t1 - start, 1), "jit_share": share, "text": text}


def warm_broker(
    cfg: BenchConfig,
    workdir: Path,
    broker: Broker,
    top: float,
    variants: tuple[str, ...] = VARIANTS,
    job_root: Path | None = None,
    commit_interval: float = 1.0,
    job_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """`warm_up` with reader points at the highest reader load, `cfg.point_seconds` each."""
    root = job_root or ROOT

    def warm_point(variant: str) -> None:
        rate, secs = max(cfg.reader_loads) * top, cfg.point_seconds
        point(broker, cfg, workdir, variant, rate, secs, root, commit_interval, job_env)

    return warm_up(broker, warm_point, variants, cfg.jit_settled, cfg.warmup_max_s)


def measure_reader(
    cfg: BenchConfig,
    workdir: Path,
    broker: Broker,
    top: float,
    log: Any = print,
    variants: tuple[str, ...] = VARIANTS,
    job_root: Path | None = None,
    commit_interval: float = 1.0,
    job_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Every variant at each of `cfg.reader_loads` of `top`, and the targets' margins.

    Returns:
        `points` (one dict per variant and load) and, per load, the p99 of each
        job variant minus the broker alone's on topics of as many partitions
        (`p99_over_broker_ms`).
    """
    points: list[dict[str, Any]] = []
    over: dict[str, dict[str, float]] = {}
    warmup = warm_broker(cfg, workdir, broker, top, variants, job_root, commit_interval, job_env)
    log(f"  reader: {warmup['text']}")
    for frac in cfg.reader_loads:
        row: dict[str, float] = {}
        for v in variants:
            r = point(
                broker,
                cfg,
                workdir,
                v,
                frac * top,
                cfg.kafka_point_seconds,
                job_root or ROOT,
                commit_interval,
                job_env,
            )
            r["load"] = frac
            points.append(r)
            row[v] = r["p99_ms"]
            log(
                f"  reader {v} @{frac:.0%} ({r['offered_per_s']:,.0f}/s, {r['counted']} counted):"
                f" p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, p99.9 {r['p999_ms']} ms"
                + (f"; {format_segments(r['segments_ms'])}" if r["segments_ms"] else "")
                + (f"; {format_createtime(r)}" if r["to_createtime_ms"] else "")
                + f"; cores {format_cores(r['cpu_cores'])}"
            )
        margins = {
            v: round(p99 - row[baseline(v)], 1)
            for v, p99 in row.items()
            if v not in BROKERS and baseline(v) in row
        }
        if margins:
            over[f"{frac:.0%}"] = margins
    return {
        "latency": "reader's receive time - producer's stamp before produce(), per message",
        "warmup": {k: v for k, v in warmup.items() if k != "text"},
        "max_events_per_s": top,
        "commit_interval_s": commit_interval,
        "points": points,
        "p99_over_broker_ms": over,
    }


def format_segments(segments: dict[str, list[float]]) -> str:
    """`segments_ms` as text: each part's p50/p99."""
    names = {"to_job": "to the job", "in_job": "in the job", "to_reader": "to the reader"}
    parts = ", ".join(f"{names[k]} {p50}/{p99}" for k, (p50, p99) in segments.items())
    return f"p50/p99 ms {parts}"


def format_createtime(point: dict[str, Any]) -> str:
    """`to_createtime_ms` as text."""
    p50, p99 = point["to_createtime_ms"]
    return f"input CreateTime -> prediction CreateTime p50/p99 ms {p50}/{p99}"


def format_cores(cores: dict[str, float]) -> str:
    """`cpu_cores` as text: each process's share, then the sum."""
    return ", ".join(f"{k} {v}" for k, v in cores.items())


def format_reader(reader: dict[str, Any]) -> list[str]:
    """The outside reader's table and each job variant's p99 margin over the broker alone."""
    out = [
        f"as an outside reader sees it (receive time - produce stamp, per message; load as a"
        f" share of {reader['max_events_per_s']:,.0f} ev/s; eos: read_committed,"
        f" {reader['commit_interval_s']} s commits)",
        f"{'path':<8}{'load':>6}{'offered/s':>11}{'counted':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}",
    ]
    for r in reader["points"]:
        out.append(
            f"{r['variant']:<8}{r['load']:>6.0%}{r['offered_per_s']:>11,.0f}{r['counted']:>9}"
            f"{r['p50_ms']:>9}{r['p99_ms']:>9}{r['p999_ms']:>10}"
        )
    for r in reader["points"]:
        if r.get("segments_ms"):
            seg = format_segments(r["segments_ms"])
            if r.get("to_createtime_ms"):
                seg += f"; {format_createtime(r)}"
            out.append(f"  {r['variant']} {r['load']:.0%}, where the time went: {seg}")
    for r in reader["points"]:
        if r.get("cpu_cores"):
            cores = format_cores(r["cpu_cores"])
            out.append(f"  {r['variant']} {r['load']:.0%}, cores used while paced: {cores}")
    for load, margins in reader["p99_over_broker_ms"].items():
        text = ", ".join(f"{v} +{m} ms" for v, m in margins.items())
        out.append(f"p99 over the broker alone (on topics alike) at {load}: {text}")
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the outside reader's view; `read ...` is the reader process."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "read":
        b, topic, parts, count, out, committed = argv[1:7]
        read(b, topic, int(parts), int(count), Path(out), committed == "1")
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--loads", default="0.2,0.5", help="fractions of the 1-worker maximum")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=", ".join(VARIANTS))
    ap.add_argument("--max-rate", type=float, help="the 1-worker maximum (default: measured)")
    ap.add_argument("--max-events", type=int, default=100_000, help="backlog of that measure")
    ap.add_argument(
        "--seconds",
        type=float,
        default=BenchConfig.kafka_point_seconds,
        help="length of each counted point (the warm-up points take 6 s)",
    )
    ap.add_argument(
        "--commit-interval", type=float, default=1.0, help="eos: FRAUD_KAFKA_COMMIT_INTERVAL, s"
    )
    ap.add_argument("--job-root", type=Path, default=ROOT, help="the checkout to run")
    ap.add_argument("--job-env", action="append", default=[], help="KEY=VALUE for the job")
    ap.add_argument("--json", type=Path, help="write the results here")
    a = ap.parse_args(argv)
    cfg = BenchConfig(kafka_point_seconds=a.seconds)
    workdir = Path(tempfile.mkdtemp(prefix="bench-reader-"))
    job_env = dict(kv.split("=", 1) for kv in a.job_env)
    report: dict[str, Any] = {"job_root": str(a.job_root), "job_env": job_env, "points": []}
    with bench_broker(workdir) as (broker, where):
        if broker is None:
            print(f"no broker: {where}")
            return 2
        top = a.max_rate
        if top is None:
            # The backlog run starts the job from that checkout.
            top = run_kafka(
                cfg, "kafka-1w", workdir, broker, events=a.max_events, job_root=a.job_root
            ).events_per_s
        print(f"1-worker maximum: {top:,.0f} ev/s ({where})")
        cfg = replace(cfg, reader_loads=tuple(float(x) for x in a.loads.split(",")))
        report.update(
            measure_reader(
                cfg,
                workdir,
                broker,
                top,
                print,
                tuple(a.variants.split(",")),
                a.job_root,
                a.commit_interval,
                job_env,
            )
        )
        print("\n".join(format_reader(report)))
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
