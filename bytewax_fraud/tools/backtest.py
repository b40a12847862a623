"""A backtest's figures from the predictions a run wrote: PR-AUC, precision, recall per model.

    python -m bytewax_fraud.tools.backtest out/predictions.jsonl

The end-of-run summary reports the same figures for the events one process
scored in one run. This reads the predictions file instead, so a replay that
was stopped and resumed (or ran as several processes) is reported as a whole:
the file sink holds each prediction exactly once, also across crashes
(docs/recovery.md). Predictions without a label are left out. Memory stays
flat: the file is streamed and the scores are binned (`label_quality.py`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import orjson

from bytewax_fraud.label_quality import LabelQuality

_CHUNK = 65_536


def quality_by_model(lines: Iterable[bytes], threshold: float = 0.5) -> dict[str, LabelQuality]:
    """Count prediction lines (JSON objects with model, probability, label) per model."""
    out: dict[str, LabelQuality] = {}
    buf: dict[str, tuple[list[float], list[int]]] = {}

    def flush() -> None:
        for model, (probs, labels) in buf.items():
            q = out.get(model)
            if q is None:
                q = out[model] = LabelQuality(threshold)
            q.update(np.asarray(probs, np.float64), np.asarray(labels, np.int8))
        buf.clear()

    n = 0
    for line in lines:
        if not line.strip():
            continue
        d = orjson.loads(line)
        label = d.get("label")
        if label is None:
            continue
        probs, labels = buf.setdefault(d["model"], ([], []))
        probs.append(d["probability"])
        labels.append(label)
        n += 1
        if n % _CHUNK == 0:
            flush()
    flush()
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bytewax_fraud.tools.backtest`."""
    ap = argparse.ArgumentParser(prog="python -m bytewax_fraud.tools.backtest", description=__doc__)
    ap.add_argument("predictions", type=Path, nargs="+", help="predictions JSON Lines file(s)")
    ap.add_argument("--threshold", type=float, default=0.5, help="flag at or above (default 0.5)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = ap.parse_args(argv)
    found: dict[str, LabelQuality] = {}
    for path in a.predictions:
        with path.open("rb") as f:
            for model, part in quality_by_model(f, a.threshold).items():
                total = found.setdefault(model, LabelQuality(a.threshold))
                total.positives += part.positives
                total.negatives += part.negatives
    figures = {model: q.get() for model, q in sorted(found.items())}
    if a.json:
        print(json.dumps(figures, indent=2))
        return 0
    if not figures:
        print("no labelled predictions", file=sys.stderr)
        return 1
    for model, f in figures.items():
        print(
            f"model {model}: PR-AUC {f['pr_auc']}, precision@{a.threshold} {f['precision']},"
            f" recall@{a.threshold} {f['recall']} over {f['labelled']:,} labelled events"
            f" ({f['fraud']:,} fraud)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
