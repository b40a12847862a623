"""The one model loader: reads once, checks the hash it is given, shares sessions."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from bytewax_fraud.errors import ModelChangedError, ModelContractError, RecoveryError
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.job import _restorer

MODELS = Path(__file__).resolve().parents[3] / "models"
GRU = MODELS / "fraud_gru.onnx"


def test_loads_checks_the_hash_and_reuses_the_session(tmp_path: Path) -> None:
    sha = hashlib.sha256(GRU.read_bytes()).hexdigest()
    loader = ModelLoader(warmup_batch=8)
    model = loader.load(GRU, sha256=sha.upper())
    assert model.model_id == "fraud_gru" and model.sha256 == sha
    assert model.signature.n_features == 8 and model.hidden_size > 0
    again = loader.load(GRU, model_id="another-id")
    assert again.shared is model.shared  # same bytes, device, threads: one session
    with pytest.raises(ModelChangedError) as err:
        loader.load(GRU, sha256="0" * 64)
    assert err.value.actual_sha256 == sha


def test_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ModelContractError):
        ModelLoader().load(bad)
    with pytest.raises(OSError):
        ModelLoader().load(tmp_path / "missing.onnx")


def test_restore_names_the_fix_for_a_changed_or_missing_model(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    shutil.copy(GRU, path)
    restore = _restorer(ModelLoader(warmup_batch=8))
    ref = {
        "path": str(path),
        "model_id": "m",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert restore(ref).model_id == "m"
    with pytest.raises(RecoveryError, match="put back the deployed file"):
        restore({**ref, "sha256": "0" * 64})
    path.unlink()
    with pytest.raises(RecoveryError, match="put the file back"):
        restore(ref)
