"""ONNX Runtime sessions: one per process and model file while in use, checked and warmed up."""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from bytewax_fraud.errors import DeviceError
from bytewax_fraud.inference.contract import ModelSignature, check_contract

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
#: (sha256, device, threads) -> the session, held weakly: see `model_session`.
_SESSIONS: weakref.WeakValueDictionary[tuple[str, str, int], ModelSession] = (
    weakref.WeakValueDictionary()
)


def model_tag(sha256_hex: str) -> int:
    """The 64-bit tag of a model: the first 8 bytes of its sha256 (stored with hidden states)."""
    return int(sha256_hex[:16], 16)


@dataclass(frozen=True, eq=False)
class ModelSession:
    """An ONNX Runtime session checked against the contract and warmed up (one per file)."""

    session: ort.InferenceSession = field(repr=False)
    signature: ModelSignature
    device: str

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


@dataclass(frozen=True)
class LoadedModel:
    """A model as a deployment names it (id, hash, file) and the shared session that runs it."""

    model_id: str
    sha256: str
    path: str = field(compare=False)
    shared: ModelSession = field(repr=False, compare=False)

    @property
    def signature(self) -> ModelSignature:
        """The inputs and outputs the model was checked to have."""
        return self.shared.signature

    @property
    def device(self) -> str:
        """The device the session runs on (`cpu` or `cuda:N`)."""
        return self.shared.device

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
        return self.shared.predict(features, hidden)


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


def model_session(
    data: bytes,
    sha256: str,
    *,
    device: str,
    threads: int,
    expected_features: int | None,
    warmup_batch: int,
) -> ModelSession:
    """The process's session for a model's bytes: shared while anything uses it, then released.

    Sessions are keyed by (sha256, device, threads), so one file loaded under two
    model ids shares one session. The table holds them weakly: once no
    `LoadedModel` refers to a session (no deployment, candidate or rollback target
    serves it), it is freed, and loading the file again builds a new one.
    Called by `inference.loader.ModelLoader`, which reads the file and hashes it once.
    """
    key = (sha256, device, threads)
    with _LOCK:
        shared = _SESSIONS.get(key)
        if shared is not None:
            return shared
        signature = check_contract(data, expected_features=expected_features)
        session, used = _session(data, device, threads)
        shared = ModelSession(session, signature, used)
        _warm_up(shared, warmup_batch)
        _SESSIONS[key] = shared
        return shared


def live_sessions() -> int:
    """How many model sessions this process holds (for tests and the status of a swap)."""
    with _LOCK:
        return len(_SESSIONS)


def _warm_up(shared: ModelSession, batch: int) -> None:
    hidden_size = shared.signature.hidden_size
    for b in (1, batch):
        feats = np.zeros((b, shared.signature.n_features), np.float32)
        hidden = np.zeros((b, hidden_size), np.float32) if hidden_size else None
        shared.predict(feats, hidden)
