"""ONNX Runtime sessions: one per process and model, checked against the contract, warmed up."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bytewax_fraud.errors import DeviceError
from bytewax_fraud.inference.contract import ModelSignature, check_contract

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_CACHE: dict[tuple[str, str, str, int], LoadedModel] = {}


def model_tag(sha256_hex: str) -> int:
    """The 64-bit tag of a model: the first 8 bytes of its sha256 (stored with hidden states)."""
    return int(sha256_hex[:16], 16)


@dataclass(frozen=True)
class LoadedModel:
    """A validated, warmed-up model ready to score batches."""

    model_id: str
    sha256: str
    signature: ModelSignature
    device: str
    path: str = field(compare=False)
    session: ort.InferenceSession = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        """How predictions name this model: id plus sha256 prefix."""
        return f"{self.model_id}@{self.sha256[:12]}"

    @property
    def tag(self) -> int:
        """The 64-bit tag stored with hidden states this model produced."""
        return model_tag(self.sha256)

    @property
    def hidden_size(self) -> int:
        """H, or 0 for a stateless model."""
        return self.signature.hidden_size

    def predict(
        self, features: npt.NDArray[np.float32], hidden: npt.NDArray[np.float32] | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Probabilities [B] and new hidden states [B, H] (None for a stateless model)."""
        if self.signature.kind == "stateless":
            (prob,) = self.session.run(["output_probability"], {"input_features": features})
            return prob.reshape(-1), None
        prob, new_hidden = self.session.run(
            ["output_probability", "output_hidden_state"],
            {"input_features": features, "input_hidden_state": hidden},
        )
        return prob.reshape(-1), new_hidden


def providers_for(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """The execution providers to ask ONNX Runtime for."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    dev_id = device.split(":", 1)[1] if ":" in device else "0"
    return [("CUDAExecutionProvider", {"device_id": dev_id}), "CPUExecutionProvider"]


def _session(data: bytes, device: str, threads: int) -> tuple[ort.InferenceSession, str]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if device == "cpu":
        return ort.InferenceSession(data, opts, providers=providers_for("cpu")), "cpu"
    cuda_ok = "CUDAExecutionProvider" in ort.get_available_providers()
    sess = None
    if cuda_ok:
        sess = ort.InferenceSession(data, opts, providers=providers_for(device))
        cuda_ok = sess.get_providers()[0] == "CUDAExecutionProvider"
    if cuda_ok and sess is not None:
        return sess, device if device != "auto" else "cuda:0"
    if device == "auto":
        log.warning("FRAUD_DEVICE=auto: no usable CUDA GPU, falling back to the CPU provider")
        return ort.InferenceSession(data, opts, providers=providers_for("cpu")), "cpu"
    raise DeviceError(
        f"FRAUD_DEVICE={device} but ONNX Runtime cannot use a CUDA GPU here (no GPU, or the CUDA"
        " 12 / cuDNN 9 libraries are missing; see docs/operations.md, CUDA). Set FRAUD_DEVICE=cpu,"
        " or FRAUD_DEVICE=auto to fall back to the CPU"
    )


def load_model(
    path: str | Path,
    *,
    model_id: str | None = None,
    device: str = "cpu",
    threads: int = 1,
    expected_features: int | None = None,
    warmup_batch: int = 256,
) -> LoadedModel:
    """Load (or reuse) the process-wide session for a model file."""
    return load_model_bytes(
        Path(path).read_bytes(),
        model_id=model_id or Path(path).stem,
        device=device,
        threads=threads,
        expected_features=expected_features,
        warmup_batch=warmup_batch,
        source=str(path),
    )


def load_model_bytes(
    data: bytes,
    *,
    model_id: str,
    device: str = "cpu",
    threads: int = 1,
    expected_features: int | None = None,
    warmup_batch: int = 256,
    source: str = "",
) -> LoadedModel:
    """Load (or reuse) the process-wide session for a model's bytes.

    The bytes are read once by the caller; the contract check, the hash and the
    session all use them. Sessions are shared by every partition of the process,
    keyed by (sha256, model id, device, threads).
    """
    sha = hashlib.sha256(data).hexdigest()
    key = (sha, model_id, device, threads)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        signature = check_contract(data, expected_features=expected_features)
        session, used = _session(data, device, threads)
        model = LoadedModel(
            model_id=model_id,
            sha256=sha,
            signature=signature,
            device=used,
            path=source,
            session=session,
        )
        _warm_up(model, warmup_batch)
        _CACHE[key] = model
        return model


def _warm_up(model: LoadedModel, batch: int) -> None:
    for b in (1, batch):
        feats = np.zeros((b, model.signature.n_features), np.float32)
        hidden = np.zeros((b, model.hidden_size), np.float32) if model.hidden_size else None
        model.predict(feats, hidden)
