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
   (`bytewax_fraud.tools.bench.external_http`);
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
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bytewax_fraud.tools.bench.baselines import run_handwritten, run_http
from bytewax_fraud.tools.bench.broker import bench_broker
from bytewax_fraud.tools.bench.config import QUICK, REFERENCE, TARGET_P99_MS, BenchConfig, Result
from bytewax_fraud.tools.bench.embedded import run_dataflow
from bytewax_fraud.tools.bench.file import measure_file
from bytewax_fraud.tools.bench.kafka import run_broker_floor, run_kafka, run_kafka_paced
from bytewax_fraud.tools.bench.plot import plot
from bytewax_fraud.tools.bench.reader import measure_reader, warm_broker
from bytewax_fraud.tools.bench.report import format_report, hardware, ratio_targets

#: Records a measured variant (and logs it) and returns it.
Add = Callable[[Result], Result]


def measure(cfg: BenchConfig, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Run every variant and the load sweep; return the report as a JSON-ready dict."""
    variants: list[Result] = []

    def add(r: Result) -> Result:
        log(f"  {r.name}: {r.events_per_s:,.0f} ev/s, p99 {r.p99_ms} ms")
        variants.append(r)
        return r

    one, reference, external = _throughput_variants(cfg, workdir, add)
    kafka = _kafka_variants(cfg, workdir, add, log)
    top = one.events_per_s
    sweep = _load_sweep(cfg, workdir, add, top)
    if kafka["ran"] and cfg.kafka_loads:
        sweep += _kafka_sweep(cfg, workdir, add, top, kafka, log)
    if external is not None:
        sweep += _external_own_sweep(cfg, workdir, add, external)

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


def _throughput_variants(
    cfg: BenchConfig, workdir: Path, add: Add
) -> tuple[Result, Result, Result | None]:
    """The embedded job at each worker count and the baselines: (embedded-1w, reference, external).

    The external baseline is None with `--skip-http`.
    """
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
    return one, reference, external


def _kafka_variants(cfg: BenchConfig, workdir: Path, add: Add, log: Any) -> dict[str, Any]:
    """The job through Kafka on a backlog at each worker count; the report's `kafka` section."""
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
    return kafka


def _load_sweep(cfg: BenchConfig, workdir: Path, add: Add, top: float) -> list[Result]:
    """The embedded job (and the external baseline) at each offered load, a share of `top`."""
    sweep: list[Result] = []
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
    return sweep


def _kafka_sweep(
    cfg: BenchConfig, workdir: Path, add: Add, top: float, kafka: dict[str, Any], log: Any
) -> list[Result]:
    """The Kafka job and the broker alone at each Kafka load; the outside reader into `kafka`."""
    sweep: list[Result] = []
    with bench_broker(workdir) as (broker, _where):
        assert broker is not None
        # This broker is fresh: its JIT compiles under the first minutes of load, on the
        # cores the job needs. Every point below is measured once it has settled.
        if cfg.kafka_loads and cfg.reader_loads:
            log(f"Kafka sweep {warm_broker(cfg, workdir, broker, top)['text']}")
        for frac in cfg.kafka_loads:
            rate = frac * top
            n = max(int(rate * cfg.kafka_point_seconds), 50 * cfg.partitions)
            name = f"kafka-1w@{frac:.0%}"
            k = run_kafka_paced(cfg, name, workdir, broker, events=n, rate=rate)
            k.extra["load"] = frac
            sweep.append(add(k))
            f = run_broker_floor(cfg, f"broker-only@{frac:.0%}", broker, events=n, rate=rate)
            f.extra["load"] = frac
            sweep.append(add(f))
        if cfg.reader_loads:
            kafka["outside_reader"] = measure_reader(cfg, workdir, broker, top, log)
    return sweep


def _external_own_sweep(
    cfg: BenchConfig, workdir: Path, add: Add, external: Result
) -> list[Result]:
    """The external endpoint at shares of its own maximum: its latency when not saturated."""
    sweep: list[Result] = []
    for frac in cfg.loads:
        rate = frac * external.events_per_s
        n = min(max(int(rate * cfg.point_seconds), 100), cfg.http_requests)
        h = run_http(cfg, f"external-own@{frac:.0%}", workdir, requests=n, rate=rate)
        h.extra["load"] = frac
        sweep.append(add(h))
    return sweep


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
        "--kafka-point-seconds",
        type=float,
        help=f"length of each Kafka latency point (default {d.kafka_point_seconds})",
    )
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
    for k in (
        "events",
        "users",
        "baseline_events",
        "http_requests",
        "point_seconds",
        "kafka_point_seconds",
        "warmup_s",
    ):
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
