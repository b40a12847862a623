"""The benchmark's file variant: the job and the hand-written loop read the same file."""

from __future__ import annotations

import math
from pathlib import Path

from bytewax_fraud.tools.bench.config import BenchConfig
from bytewax_fraud.tools.bench.file import format_file, measure_file, write_input
from bytewax_fraud.tools.bench.handwritten import pregenerate


def test_the_input_is_the_bytes_the_hand_written_loop_generates(tmp_path: Path) -> None:
    cfg = BenchConfig(events=3_000, users=500)
    path = tmp_path / "in.jsonl"
    write_input(cfg, path)
    assert path.read_bytes().splitlines() == pregenerate(500, cfg.seed, cfg.partitions, 3_000)


def test_both_variants_score_every_event_and_the_ratio_is_theirs(tmp_path: Path) -> None:
    cfg = BenchConfig(events=6_000, users=1_000)
    section = measure_file(cfg, tmp_path, log=lambda _: None)
    job = section["variants"]["embedded-1w-file"]
    loop = section["variants"]["handwritten-batched-file"]
    assert job["events"] == loop["events"] == 6_000
    assert job["events_per_s"] > 0 and loop["events_per_s"] > 0
    assert math.isclose(
        section["x_handwritten_file"], job["events_per_s"] / loop["events_per_s"], abs_tol=1e-3
    )
    assert section["input_bytes"] > 6_000 * 100
    assert "ratio embedded-1w-file / handwritten-batched-file" in "\n".join(format_file(section))
