"""The backtest tool: per-model figures from a predictions file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bytewax_fraud.tools.backtest import main


def _pred(model: str, p: float, label: int | None) -> bytes:
    return json.dumps({"model": model, "probability": p, "label": label}).encode()


def test_figures_per_model_and_unlabelled_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "predictions.jsonl"
    lines = [
        _pred("a", 0.9, 1),
        _pred("a", 0.6, 0),
        _pred("a", 0.2, 1),
        _pred("a", 0.99, None),
        _pred("b", 0.1, 0),
        _pred("b", 0.7, 1),
    ]
    f.write_bytes(b"\n".join(lines) + b"\n")
    assert main([str(f), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["a"]["labelled"] == 3 and got["a"]["fraud"] == 2
    assert got["a"]["precision"] == 0.5 and got["a"]["recall"] == 0.5
    assert got["a"]["pr_auc"] == round(1.0 * 0.5 + 0.5 * (2 / 3), 4)
    assert got["b"] == {"labelled": 2, "fraud": 1, "pr_auc": 1.0, "precision": 1.0, "recall": 1.0}
    assert main([str(f)]) == 0
    assert "model b: PR-AUC 1.0, precision@0.5 1.0" in capsys.readouterr().out


def test_no_labels_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    f.write_bytes(_pred("a", 0.5, None) + b"\n")
    assert main([str(f)]) == 1
