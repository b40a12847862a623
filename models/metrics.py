"""Ranking metrics for fraud scores: ROC-AUC, PR-AUC (average precision), recall at low FPR.

Pure numpy. Tied scores are handled the way scikit-learn does: a threshold is placed only
between distinct scores, so tied events move together along the curves.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def _curve(
    labels: npt.ArrayLike, scores: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int, int]:
    """Cumulative (false positives, true positives) at each distinct threshold, high to low."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    pos = int(y.sum())
    neg = int(y.shape[0] - pos)
    if pos == 0 or neg == 0:
        raise ValueError("need at least one positive and one negative label")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.shape[0] - 1]
    tps = np.cumsum(y, dtype=np.float64)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return fps, tps, pos, neg


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (probability a positive outranks a negative, ties count half)."""
    fps, tps, pos, neg = _curve(labels, scores)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """PR-AUC as average precision: sum over thresholds of (recall step) x precision."""
    fps, tps, pos, _ = _curve(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def recall_at_fpr(labels: npt.ArrayLike, scores: npt.ArrayLike, max_fpr: float = 0.01) -> float:
    """The highest recall of any threshold whose false-positive rate is at most `max_fpr`."""
    fps, tps, pos, neg = _curve(labels, scores)
    ok = fps / neg <= max_fpr
    return float(tps[ok].max() / pos) if ok.any() else 0.0


def summary(labels: npt.ArrayLike, scores: npt.ArrayLike) -> dict[str, float]:
    """All three metrics, keyed `roc_auc`, `pr_auc`, `recall_at_1pct_fpr`."""
    return {
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": average_precision(labels, scores),
        "recall_at_1pct_fpr": recall_at_fpr(labels, scores, 0.01),
    }
