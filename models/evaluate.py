"""Offline evaluation of the shipped ONNX models on a held-out generator seed.

Features are computed exactly as serving computes them: users are stepped in waves (every
user's k-th event in wave k) through `features.compute_features` / `features.push`, with
empty windows and a zero hidden state at each user's first event.

Run `python -m models.evaluate` to print the metrics of the files in `models/`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bytewax_fraud import features as fx
from bytewax_fraud.connectors.generator import EventChunk, TransactionGenerator, merchant_id
from models.metrics import summary

MODELS_DIR = Path(__file__).resolve().parent
GRU_FILE = "fraud_gru.onnx"
GRU_SEQ_FILE = "fraud_gru_seq.onnx"
STATELESS_FILE = "fraud_stateless.onnx"
WINDOW = 10
HIDDEN = 128


@dataclass(frozen=True)
class EvalConfig:
    """Which generator stream to evaluate on (partition_count 1: every user of the seed)."""

    seed: int = 2
    users: int = 5_000
    events: int = 250_000


@dataclass(frozen=True)
class Featurized:
    """Events with their serving-time features, plus a by-user index for sequences."""

    features: npt.NDArray[np.float32]  # [n, F], event order
    labels: npt.NDArray[np.int8]  # [n]
    user_order: npt.NDArray[np.int64]  # event indices sorted by (user, time)
    user_first: npt.NDArray[np.int64]  # [U] start of each user's run in user_order
    user_count: npt.NDArray[np.int64]  # [U] events per user


def featurize(cols: EventChunk, window: int = WINDOW) -> Featurized:
    """Serving-time features of every event, stepping all users in waves."""
    n = len(cols)
    _, inv = np.unique(cols.user_index, return_inverse=True)
    n_users = int(inv.max(initial=-1)) + 1
    user_order = np.argsort(inv, kind="stable").astype(np.int64)
    counts = np.bincount(inv, minlength=n_users).astype(np.int64)
    first = np.cumsum(counts) - counts
    rank = np.empty(n, dtype=np.int64)
    rank[user_order] = np.arange(n) - np.repeat(first, counts)

    uniq_m, m_inv = np.unique(cols.merchant_index, return_inverse=True)
    codes = np.array([fx.merchant_code(merchant_id(int(m))) for m in uniq_m], dtype=np.uint32)
    mcode = codes[m_inv]

    amounts = np.zeros((n_users, window), dtype=np.float32)
    merchants = np.zeros((n_users, window), dtype=np.uint32)
    count = np.zeros(n_users, dtype=np.int64)
    last_ts = np.zeros(n_users, dtype=np.float64)
    out = np.empty((n, fx.N_FEATURES), dtype=np.float32)
    by_rank = np.argsort(rank, kind="stable")
    bounds = np.r_[0, np.cumsum(np.bincount(rank))]
    for r in range(bounds.shape[0] - 1):
        sel = by_rank[bounds[r] : bounds[r + 1]]
        u = inv[sel]
        amt, ts, mc = cols.amount[sel], cols.timestamp[sel], mcode[sel]
        out[sel] = fx.compute_features(amounts[u], merchants[u], count[u], last_ts[u], amt, ts, mc)
        amounts[u], merchants[u], count[u] = fx.push(amounts[u], merchants[u], count[u], amt, mc)
        last_ts[u] = ts
    return Featurized(out, cols.label.copy(), user_order, first, counts)


def sequence_batches(
    data: Featurized, max_users: int = 512
) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]]:
    """[T, B] event-index matrices (and validity masks) of users grouped by sequence length."""
    by_len = np.argsort(data.user_count, kind="stable")
    for lo in range(0, by_len.shape[0], max_users):
        users = by_len[lo : lo + max_users]
        lengths = data.user_count[users]
        t = np.arange(int(lengths.max()))[:, None]
        mask = t < lengths[None, :]
        pos = np.where(mask, data.user_first[users][None, :] + t, 0)
        yield data.user_order[pos], mask


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def score_gru_sequence(path: Path, data: Featurized) -> npt.NDArray[np.float64]:
    """Probabilities of the GRU (sequence form) for every event, in event order."""
    sess = _session(path)
    hidden = int(sess.get_inputs()[1].shape[1])
    scores = np.zeros(data.labels.shape[0], dtype=np.float64)
    for idx, mask in sequence_batches(data):
        x = np.where(mask[..., None], data.features[idx], 0.0).astype(np.float32)
        h0 = np.zeros((idx.shape[1], hidden), dtype=np.float32)
        (p, _) = sess.run(None, {"input_features": x, "input_hidden_state": h0})
        scores[idx[mask]] = p[..., 0][mask]
    return scores


def score_stateless(path: Path, data: Featurized) -> npt.NDArray[np.float64]:
    """Probabilities of the stateless model for every event."""
    (p,) = _session(path).run(None, {"input_features": data.features})
    return np.asarray(p[:, 0], dtype=np.float64)


def score_rule(data: Featurized) -> npt.NDArray[np.float64]:
    """The rule baseline: amount / rolling mean of the window (1 without history)."""
    return np.exp(data.features[:, fx.FEATURE_NAMES.index("log_ratio_to_mean")].astype(np.float64))


def evaluate(
    config: EvalConfig | dict[str, Any] | None = None, models_dir: Path = MODELS_DIR
) -> dict:
    """Metrics of the GRU, the stateless model and the rule on the configured held-out stream."""
    cfg = EvalConfig(**config) if isinstance(config, dict) else (config or EvalConfig())
    cols = TransactionGenerator(cfg.users, seed=cfg.seed).columns(cfg.events)
    data = featurize(cols)
    y = data.labels
    return {
        "config": asdict(cfg),
        "fraud_events": int(y.sum()),
        "models": {
            "gru": summary(y, score_gru_sequence(models_dir / GRU_SEQ_FILE, data)),
            "stateless": summary(y, score_stateless(models_dir / STATELESS_FILE, data)),
            "rule": summary(y, score_rule(data)),
        },
    }


if __name__ == "__main__":
    print(json.dumps(evaluate(), indent=2))
