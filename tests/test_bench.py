"""The benchmark's smoke configuration runs every variant and reports sane figures.

This checks that the benchmark works, not how fast anything is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bytewax_fraud.bench import main


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
    assert set(variants) == {
        "embedded-1w",
        "embedded-2p",
        "embedded-2t",
        "per-event",
        "external-http",
    }
    sweep = report["load_sweep"]["points"]
    assert {p["name"].split("@")[0] for p in sweep} == {"embedded-1w", "external", "external-own"}
    for r in [*variants.values(), *sweep]:
        assert r["events"] > 0 and r["events_per_s"] > 0, r["name"]
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            assert math.isfinite(r[k]) and r[k] >= 0, (r["name"], k)
        assert r["peak_rss_mb"] > 0, r["name"]
    for r in variants.values():
        assert r["extra"]["x_per_event"] > 0 and r["extra"]["x_external"] > 0
    assert variants["per-event"]["extra"]["batch_max"] == 1
    assert set(report["load_sweep"]["p99_ms_at_50pct"]) == {
        "embedded-1w",
        "external",
        "external-own",
    }
    # The plot is drawn only where matplotlib is installed (the `bench` extra).
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.stat().st_size > 0
