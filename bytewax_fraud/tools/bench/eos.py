"""What exactly-once output costs on Apache Kafka: the delivery modes side by side, in one run.

Variants, each on its own topics of one broker (Apache Kafka started here, or
KAFKA_BOOTSTRAP_SERVERS), all with a recovery directory and the same snapshot
interval; exactly-once commits every `--commit-interval` in the background
(FRAUD_KAFKA_COMMIT_INTERVAL) and at each snapshot:

- `alo-1w`, `eos-1w`: at-least-once / exactly-once, 1 worker;
- `alo-2p`, `eos-2p`: the same with 2 processes;
- `broker-only`: the same messages produced and consumed with no job (the floor).

Throughput is the predictions topic's rate (`kafka.run_kafka`; read with
read_committed, so an exactly-once run counts only what it committed). The
latency figures are the job's own (`latency_ms`: source to produce); a
read_committed consumer sees an exactly-once prediction up to one commit
interval later. Prints a table and the ratios eos / alo; `--json` writes them.

    python -m bytewax_fraud.tools.bench.eos [--events N] [--commit-interval S]
        [--snapshot-interval S] [--json F]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from bytewax_fraud.tools.bench.broker import bench_broker
from bytewax_fraud.tools.bench.config import BenchConfig, Result
from bytewax_fraud.tools.bench.kafka import run_broker_floor, run_kafka


def run(
    events: int,
    commit_interval: float,
    workdir: Path,
    processes: int = 2,
    snapshot_interval: float = 5.0,
) -> dict[str, Result]:
    """Measure every variant once; returns them by name (empty when there is no broker)."""
    cfg = BenchConfig(events=events, users=max(events // 10, 100))
    out: dict[str, Result] = {}
    with bench_broker(workdir) as (broker, where):
        print(f"broker: {where}", file=sys.stderr)
        if broker is None:
            return out
        for delivery, tag in (("at-least-once", "alo"), ("exactly-once", "eos")):
            env = {
                "FRAUD_KAFKA_DELIVERY": delivery,
                "FRAUD_RECOVERY_DIR": "recovery",
                "FRAUD_SNAPSHOT_INTERVAL": str(snapshot_interval),
                "FRAUD_KAFKA_COMMIT_INTERVAL": str(commit_interval),
                "FRAUD_BACKUP_INTERVAL": "0",
            }
            for n in (1, processes):
                name = f"{tag}-{n}{'w' if n == 1 else 'p'}"
                print(f"  {name} ...", file=sys.stderr)
                out[name] = run_kafka(
                    cfg, name, workdir, broker, events=events, processes=n, extra_env=env
                )
        rate = out["alo-1w"].events_per_s
        out["broker-only"] = run_broker_floor(cfg, "broker-only", broker, events=events, rate=rate)
    return out


def ratios(results: dict[str, Result]) -> dict[str, float]:
    """Exactly-once over at-least-once, for throughput and the job's p99 latency."""
    out: dict[str, float] = {}
    for shape in ("1w", "2p"):
        alo, eos = results.get(f"alo-{shape}"), results.get(f"eos-{shape}")
        if alo and eos and alo.events_per_s:
            out[f"throughput eos/alo {shape}"] = round(eos.events_per_s / alo.events_per_s, 3)
            out[f"p99 eos/alo {shape}"] = round(eos.p99_ms / alo.p99_ms, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(prog="python -m bytewax_fraud.tools.bench.eos")
    ap.add_argument("--events", type=int, default=200_000, help="events per variant")
    ap.add_argument(
        "--commit-interval",
        type=float,
        default=1.0,
        help="exactly-once: FRAUD_KAFKA_COMMIT_INTERVAL, seconds (0: commit at snapshots only)",
    )
    ap.add_argument(
        "--snapshot-interval", type=float, default=5.0, help="FRAUD_SNAPSHOT_INTERVAL, seconds"
    )
    ap.add_argument("--processes", type=int, default=2, help="processes of the cluster variants")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--workdir", type=Path, help="scratch directory (default: a temporary one)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        results = run(
            args.events, args.commit_interval, Path(tmp), args.processes, args.snapshot_interval
        )
    if not results:
        print("no broker: run .ci/install-kafka or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 1
    print(f"{'variant':<12} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results.values():
        print(f"{r.name:<12} {r.events_per_s:>10,.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f}")
    rs = ratios(results)
    for k, v in rs.items():
        print(f"{k}: {v}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "events": args.events,
                    "commit_interval_s": args.commit_interval,
                    "snapshot_interval_s": args.snapshot_interval,
                    "variants": {k: asdict(v) for k, v in results.items()},
                    "ratios": rs,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
