"""Execution devices: cuda fails clearly without a GPU, auto falls back, CUDA tests skip."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from bytewax_fraud.errors import DeviceError
from bytewax_fraud.inference.loader import ModelLoader

GRU = Path(__file__).resolve().parents[3] / "models" / "fraud_gru.onnx"


def _gpu_usable() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers() or not shutil.which(
        "nvidia-smi"
    ):
        return False
    sess = ort.InferenceSession(str(GRU), providers=["CUDAExecutionProvider"])
    return sess.get_providers()[0] == "CUDAExecutionProvider"


GPU = _gpu_usable()


@pytest.mark.skipif(GPU, reason="a usable GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="FRAUD_DEVICE=cuda.*FRAUD_DEVICE=cpu"):
        ModelLoader("cuda").load(GRU, model_id="gru-cuda-test")


@pytest.mark.skipif(GPU, reason="a usable GPU is present")
def test_auto_falls_back_to_the_cpu_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        model = ModelLoader("auto").load(GRU, model_id="gru-auto-test")
    assert model.device == "cpu"
    assert "falling back to the CPU" in caplog.text


@pytest.mark.skipif(not GPU, reason="no usable CUDA GPU on this machine")
def test_cuda_scores_like_the_cpu() -> None:
    cpu = ModelLoader("cpu").load(GRU, model_id="gru-cpu")
    gpu = ModelLoader("cuda").load(GRU, model_id="gru-gpu")
    assert gpu.device.startswith("cuda")
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(256, cpu.signature.n_features)).astype(np.float32)
    hidden = rng.normal(size=(256, cpu.hidden_size)).astype(np.float32)
    p_cpu, h_cpu = cpu.predict(feats, hidden)
    p_gpu, h_gpu = gpu.predict(feats, hidden)
    np.testing.assert_allclose(p_gpu, p_cpu, atol=1e-4)
    assert h_cpu is not None and h_gpu is not None
    np.testing.assert_allclose(h_gpu, h_cpu, atol=1e-4)
