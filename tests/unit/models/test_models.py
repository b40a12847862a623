"""The shipped ONNX models: reproducible held-out metrics, integrity, and graph correctness."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bytewax_fraud.features import N_FEATURES
from models import graphs
from models.evaluate import EvalConfig, evaluate
from models.metrics import average_precision, recall_at_fpr, roc_auc

MODELS = Path(__file__).resolve().parents[3] / "models"
METRICS = json.loads((MODELS / "metrics.json").read_text())


def _session(model: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def recomputed() -> dict:
    return evaluate(EvalConfig(**METRICS["eval"]["config"]))


def test_metrics_reproduce_from_shipped_files(recomputed: dict) -> None:
    assert recomputed["fraud_events"] == METRICS["eval"]["fraud_events"]
    for model, shipped in METRICS["eval"]["models"].items():
        for name, value in shipped.items():
            assert recomputed["models"][model][name] == pytest.approx(value, abs=0.01), (
                model,
                name,
            )


def test_gru_beats_stateless_by_margin(recomputed: dict) -> None:
    m = recomputed["models"]
    assert m["gru"]["pr_auc"] >= m["stateless"]["pr_auc"] + 0.15


def test_sha256_matches_files() -> None:
    for name, digest in METRICS["sha256"].items():
        assert hashlib.sha256((MODELS / name).read_bytes()).hexdigest() == digest, name


def test_step_model_equals_sequence_model() -> None:
    step = _session(str(MODELS / "fraud_gru.onnx"))
    seq = _session(str(MODELS / "fraud_gru_seq.onnx"))
    rng = np.random.default_rng(0)
    t, b, h = 12, 5, 128
    x = rng.normal(0.0, 1.5, (t, b, N_FEATURES)).astype(np.float32)
    h0 = rng.normal(0.0, 0.3, (b, h)).astype(np.float32)
    probs, h_last = seq.run(None, {"input_features": x, "input_hidden_state": h0})
    state = h0
    for k in range(t):
        p, state = step.run(None, {"input_features": x[k], "input_hidden_state": state})
        np.testing.assert_allclose(p, probs[k], atol=1e-5)
    np.testing.assert_allclose(state, h_last, atol=1e-5)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def test_gru_graph_follows_pytorch_semantics() -> None:
    """A numpy GRU in PyTorch's layout (gates r, z, n) agrees with the built ONNX graph."""
    rng = np.random.default_rng(1)
    f, h = 3, 4

    def rand(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.5, shape).astype(np.float32)

    w = graphs.GruWeights(
        mean=rand(f),
        std=np.abs(rand(f)) + 0.5,
        weight_ih=rand(3 * h, f),
        weight_hh=rand(3 * h, h),
        bias_ih=rand(3 * h),
        bias_hh=rand(3 * h),
        head=(graphs.Dense(rand(h, 2), rand(2)), graphs.Dense(rand(2, 1), rand(1))),
    )
    x, h0 = rand(6, f), rand(6, h)
    xn = (x - w.mean) / w.std
    gi = xn @ w.weight_ih.T + w.bias_ih
    gh = h0 @ w.weight_hh.T + w.bias_hh
    r = _sigmoid(gi[:, :h] + gh[:, :h])
    z = _sigmoid(gi[:, h : 2 * h] + gh[:, h : 2 * h])
    n = np.tanh(gi[:, 2 * h :] + r * gh[:, 2 * h :])
    h1 = (1 - z) * n + z * h0
    hidden = np.maximum(h1 @ w.head[0].weight + w.head[0].bias, 0.0)
    p = _sigmoid(hidden @ w.head[1].weight + w.head[1].bias)

    sess = _session(graphs.gru_step_model(w).SerializeToString())
    got_p, got_h = sess.run(None, {"input_features": x, "input_hidden_state": h0})
    np.testing.assert_allclose(got_h, h1, atol=1e-5)
    np.testing.assert_allclose(got_p, p, atol=1e-5)


def test_stateless_graph_uses_only_its_features() -> None:
    rng = np.random.default_rng(2)
    layer = graphs.Dense(rng.normal(size=(2, 1)).astype(np.float32), np.zeros(1, np.float32))
    w = graphs.MlpWeights(
        n_features=5,
        feature_indices=(1, 3),
        mean=np.zeros(2, np.float32),
        std=np.ones(2, np.float32),
        layers=(layer,),
    )
    sess = _session(graphs.stateless_model(w).SerializeToString())
    x = rng.normal(size=(4, 5)).astype(np.float32)
    (p,) = sess.run(None, {"input_features": x})
    np.testing.assert_allclose(p, _sigmoid(x[:, [1, 3]] @ layer.weight), atol=1e-6)
    x2 = x.copy()
    x2[:, [0, 2, 4]] = 99.0
    np.testing.assert_allclose(sess.run(None, {"input_features": x2})[0], p, atol=1e-6)


def test_metric_functions_on_known_cases() -> None:
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert roc_auc(y, s) == pytest.approx(0.75)
    assert average_precision(y, s) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    assert recall_at_fpr(y, s, 0.0) == pytest.approx(0.5)
    assert roc_auc(y, np.ones(4)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc(np.zeros(3), np.ones(3))
