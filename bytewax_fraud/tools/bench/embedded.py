"""The embedded variants: `dataflows.fraud` as `bytewax.run` subprocesses on fresh state.

The generator is the input, JSON Lines files the output. Throughput is the
steady state of the predictions file, latencies the `latency_ms` field of every
prediction after the warm-up (`runner`).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from bytewax_fraud.settings import Settings
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.tools.bench.config import WINDOW, BenchConfig, BenchError, Result
from bytewax_fraud.tools.bench.runner import (
    LATENCY,
    base_env,
    percentiles,
    poll_predictions,
    start_processes,
    steady_rate,
    tail,
    wait,
    warmup_lines,
)


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
    env = base_env()
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
    procs = start_processes(cmd, env, d, processes)
    samples = poll_predictions(out / "predictions.jsonl", procs)
    codes = wait(procs, 0.0)
    if any(rc != 0 for rc, _ in codes):
        logs = "\n".join(tail(d / f"log-{i}.txt") for i in range(processes))
        raise BenchError(f"{name}: bytewax.run exited with {[rc for rc, _ in codes]}:\n{logs}")
    data = (out / "predictions.jsonl").read_bytes()
    lat = np.array(LATENCY.findall(data)).astype(np.float64)
    if len(lat) != events:
        raise BenchError(f"{name}: expected {events} predictions, found {len(lat)} in {out}")
    skip = warmup_lines(samples, cfg.warmup_s, events)
    lat = lat[skip:]
    summaries = [json.loads((d / f"summary-{i}.json").read_text()) for i in range(processes)]
    p50, p99, p999 = percentiles(lat)
    result = Result(
        name=name,
        events=events,
        events_per_s=round(steady_rate(samples, events, summaries), 1),
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
