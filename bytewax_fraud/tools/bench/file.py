"""The benchmark's file variant: the job and the hand-written loop reading the same file.

The other embedded variants generate and encode their input inside the measured
run, while the hand-written loops get their bytes before their clock starts.
Here both read one pre-generated JSON Lines file (the generator's events, the
bytes `handwritten.pregenerate` makes): `embedded-1w-file` is the job with
`FRAUD_INPUT` set to it, `handwritten-batched-file` the batched hand-written
loop reading it inside its clock (one `read_bytes` and `splitlines`). Their
ratio is `x_handwritten_file`. The job's rate is its steady state, as for the
other variants; the loop's is from its start to its end.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bytewax_fraud.tools.bench.baselines import run_handwritten
from bytewax_fraud.tools.bench.config import BenchConfig
from bytewax_fraud.tools.bench.embedded import run_dataflow
from bytewax_fraud.tools.bench.handwritten import pregenerate


def write_input(cfg: BenchConfig, path: Path) -> int:
    """Write the benchmark's events as JSON Lines to `path`; returns its size in bytes."""
    values = pregenerate(cfg.users, cfg.seed, cfg.partitions, cfg.events)
    path.write_bytes(b"\n".join(values) + b"\n")
    return path.stat().st_size


def measure_file(cfg: BenchConfig, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Run both file variants on one pre-generated file; their results and ratio."""
    path = workdir / "bench-input.jsonl"
    size = write_input(cfg, path)
    results = []
    env = {"FRAUD_INPUT": str(path)}
    for r in (
        run_dataflow(cfg, "embedded-1w-file", workdir, events=cfg.events, extra_env=env),
        run_handwritten(
            cfg,
            "handwritten-batched-file",
            workdir,
            mode="batched",
            events=cfg.events,
            extra_args=("--input", str(path)),
        ),
    ):
        log(f"  {r.name}: {r.events_per_s:,.0f} ev/s, p99 {r.p99_ms} ms")
        results.append(r)
    job, loop = results
    path.unlink()
    return {
        "input_bytes": size,
        "variants": {r.name: asdict(r) for r in results},
        "x_handwritten_file": round(job.events_per_s / loop.events_per_s, 3),
    }


def format_file(section: dict[str, Any] | None) -> list[str]:
    """The file variants' lines of the report (none if they did not run)."""
    if not section:
        return []
    v = section["variants"]
    lines = [
        f"{name:<26}{r['events']:>9,}{r['events_per_s']:>11,.0f}"
        f"{'-' if math.isnan(r['p99_ms']) else format(r['p99_ms'], ',.2f'):>9}"
        f"{r['peak_rss_mb']:>9,.0f}"
        for name, r in v.items()
    ]
    return [
        f"file input ({section['input_bytes'] / 1e6:.1f} MB of JSON Lines, read by both):",
        *lines,
        f"ratio embedded-1w-file / handwritten-batched-file: {section['x_handwritten_file']:.2f}",
    ]
