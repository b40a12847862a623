"""PR-AUC, precision and recall from binned scores, against the exact computation."""

from __future__ import annotations

import numpy as np
import pytest

from bytewax_fraud.label_quality import BINS, LabelQuality


def exact_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """scikit-learn's average_precision_score: one point per distinct score, highest first."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tie group
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / y.sum()
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


@pytest.mark.parametrize("seed", range(5))
def test_pr_auc_is_exact_when_scores_in_a_bin_are_equal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(20_000) < 0.03).astype(np.int8)
    raw = np.clip(rng.normal(0.2 + 0.5 * labels, 0.2), 0, 0.9999)
    scores = (np.floor(raw * BINS) + 0.5) / BINS  # bin centres: ties within a bin only
    q = LabelQuality()
    for lo in range(0, len(scores), 3000):  # in batches, as a run counts them
        q.update(scores[lo : lo + 3000], labels[lo : lo + 3000])
    got = q.get()
    assert got["pr_auc"] == round(exact_average_precision(scores, labels), 4)
    flagged = scores >= 0.5
    tp = int(np.sum(flagged & (labels == 1)))
    assert got["precision"] == round(tp / int(flagged.sum()), 4)
    assert got["recall"] == round(tp / int(labels.sum()), 4)
    assert got["labelled"] == 20_000 and got["fraud"] == int(labels.sum())


def test_pr_auc_of_raw_scores_is_within_a_bin_of_exact() -> None:
    rng = np.random.default_rng(9)
    labels = (rng.random(50_000) < 0.05).astype(np.int8)
    scores = rng.beta(1 + 4 * labels, 6).astype(np.float32)
    q = LabelQuality()
    q.update(scores, labels)
    exact = exact_average_precision(scores.astype(np.float64), labels)
    assert abs(q.get()["pr_auc"] - exact) < 1e-3  # type: ignore[operator]


def test_unlabelled_events_are_left_out_and_undefined_figures_are_none() -> None:
    q = LabelQuality()
    q.update(np.array([0.9, 0.1, 0.8]), np.array([-1, 0, -1]))
    assert q.get() == {
        "labelled": 1,
        "fraud": 0,
        "pr_auc": None,
        "precision": None,
        "recall": None,
    }


def test_a_perfect_ranking_has_pr_auc_one() -> None:
    q = LabelQuality()
    q.update(np.array([0.99, 0.98, 0.2, 0.1]), np.array([1, 1, 0, 0]))
    assert q.get()["pr_auc"] == 1.0
