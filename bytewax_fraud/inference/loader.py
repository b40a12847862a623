"""The one way this process loads a model: at start, on restore, for a load command and in tools.

The file is read once and hashed once; the hash check, the contract check and
the session all use those same bytes, so the file cannot change between the
check and the load. Sessions are shared per file and released when no longer
used (`inference.runtime.model_session`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from bytewax_fraud.errors import ModelChangedError
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.inference.runtime import LoadedModel, model_session


@dataclass(frozen=True)
class ModelLoader:
    """Loads models for this process's device and threads, checked against the features.

    Attributes:
        device: `cpu`, `cuda`, `cuda:N` or `auto` (FRAUD_DEVICE).
        threads: ONNX Runtime intra-op threads (FRAUD_ORT_THREADS).
        warmup_batch: The batch size the model is warmed up with (FRAUD_BATCH_MAX).
    """

    device: str = "cpu"
    threads: int = 1
    warmup_batch: int = 256

    def load(
        self, path: str | Path, *, model_id: str | None = None, sha256: str | None = None
    ) -> LoadedModel:
        """Read, check and load a model file (one session per file while in use).

        Args:
            path: The ONNX file.
            model_id: The name predictions show (default: the file's stem).
            sha256: If given, the hash the file must have.

        Raises:
            OSError: The file cannot be read.
            ModelChangedError: The file's sha256 is not `sha256`.
            ModelContractError: The file is not a model following the contract.
            DeviceError: The device cannot be used.
        """
        path = Path(path)
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise ModelChangedError(
                f"{path} has sha256 {actual}, expected {sha256.lower()}", actual
            )
        shared = model_session(
            data,
            actual,
            device=self.device,
            threads=self.threads,
            expected_features=N_FEATURES,
            warmup_batch=self.warmup_batch,
        )
        return LoadedModel(model_id or path.stem, actual, str(path), shared)
