"""A stateful model's sequence form: one call scores every step of many users' runs.

The step model declares its sequence form in its metadata (see contract.py). Here
the declaration is followed: the file beside the step model is read once, checked
against its sha256 and the sequence contract, loaded for the step model's device and
threads, and probed against the step model (the two must compute the same network).
Whatever fails on the way leaves the model without a sequence form, with the reason:
the scorer then falls back to waves, and the status line and the metrics say why.

Forms are kept per loaded model, as long as the model itself is kept.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from bytewax_fraud.errors import ModelContractError
from bytewax_fraud.inference.contract import (
    FEATURES,
    HIDDEN_IN,
    HIDDEN_OUT,
    PROBABILITY,
    SEQUENCE_FORM_KEY,
    check_sequence_contract,
    sequence_declaration,
)
from bytewax_fraud.inference.runtime import LoadedModel, providers_for

log = logging.getLogger(__name__)

#: Largest difference allowed between the sequence form and T steps of the step model
#: on the load-time probe. Both run the same float32 network; they differ only in how
#: ONNX Runtime blocks the matrix products ([T*B, F] at once against [B, F] per step),
#: which moves the last bits (~1e-7 measured). A different network differs by far more.
PROBE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class SequenceForm:
    """A loaded sequence form: [T, B, F] and [B, H] in, [T, B] and [B, H] out."""

    path: str
    sha256: str
    session: ort.InferenceSession = field(repr=False, compare=False)

    def predict(
        self, features: npt.NDArray[np.float32], hidden: npt.NDArray[np.float32]
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Probabilities [T, B] of every step and the hidden states [B, H] after the last."""
        prob, new_hidden = self.session.run(
            [PROBABILITY, HIDDEN_OUT], {FEATURES: features, HIDDEN_IN: hidden}
        )
        return prob[..., 0], new_hidden


@dataclass(frozen=True)
class BatchShape:
    """How the scorer feeds a model: runs (one call per run length) or waves, and why."""

    #: The sequence form of a stateful model, else None.
    sequence: SequenceForm | None
    #: Whether a user's run of events goes through the model in one call.
    runs: bool
    #: Why the model is served in waves ("" when it is not).
    reason: str = ""


_LOCK = threading.Lock()
_SHAPES: weakref.WeakKeyDictionary[LoadedModel, BatchShape] = weakref.WeakKeyDictionary()


def batch_shape(model: LoadedModel) -> BatchShape:
    """How `model` is fed, resolved once per loaded model.

    A stateless model scores every event on its own, so its runs need no sequence
    form. A stateful one runs through its declared sequence form, or in waves.
    """
    found = _SHAPES.get(model)
    if found is not None:
        return found
    with _LOCK:
        found = _SHAPES.get(model)
        if found is None:
            found = _SHAPES[model] = _resolve(model)
            if not found.runs:
                log.warning("model %s is served in waves: %s", model.label, found.reason)
    return found


def _resolve(model: LoadedModel) -> BatchShape:
    if model.hidden_size == 0:
        return BatchShape(sequence=None, runs=True)
    try:
        form = load_sequence_form(model)
    except (ModelContractError, OSError) as exc:
        return BatchShape(sequence=None, runs=False, reason=str(exc))
    if form is None:
        return BatchShape(
            sequence=None, runs=False, reason=f"it declares no sequence form ({SEQUENCE_FORM_KEY})"
        )
    return BatchShape(sequence=form, runs=True)


def load_sequence_form(model: LoadedModel) -> SequenceForm | None:
    """Load the sequence form a loaded step model declares (None: it declares none).

    Raises:
        ModelContractError: the declaration cannot be followed (a malformed entry, a wrong
            sha256, the sequence contract, or the probe
            disagrees with the step model).
        OSError: the sequence file cannot be read.
    """
    # The declaration comes from the bytes the loader read and hashed, not a second read.
    decl = sequence_declaration(model.signature)
    if decl is None:
        return None
    step_path = Path(model.path)
    seq_path = step_path.parent / decl.file
    try:
        data = seq_path.read_bytes()
    except OSError as exc:
        raise ModelContractError(
            f"its sequence form {seq_path} cannot be read ({exc.strerror or exc});"
            f" ship it beside {step_path.name}"
        ) from exc
    sha = hashlib.sha256(data).hexdigest()
    if sha != decl.sha256:
        raise ModelContractError(
            f"its sequence form {seq_path} has sha256 {sha}, the step model declares"
            f" {decl.sha256}; ship the two files together"
        )
    check_sequence_contract(data, model.signature.n_features, model.hidden_size)
    form = SequenceForm(str(seq_path), sha, _session(data, model))
    gap = probe(model, form)
    if not gap <= PROBE_TOLERANCE:
        raise ModelContractError(
            f"its sequence form {seq_path} disagrees with the step model by {gap:.1e}"
            f" (allowed {PROBE_TOLERANCE:.0e}): they are not the same network"
        )
    return form


def _session(data: bytes, model: LoadedModel) -> ort.InferenceSession:
    """A session for the sequence form with the step model's device and threads."""
    step_opts = model.shared.session.get_session_options()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = step_opts.intra_op_num_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=providers_for(model.device))


def probe(model: LoadedModel, form: SequenceForm, steps: int = 4, users: int = 8) -> float:
    """Largest difference between the sequence form and `steps` calls of the step model."""
    rng = np.random.default_rng(0)
    f, h = model.signature.n_features, model.hidden_size
    x = rng.normal(size=(steps, users, f)).astype(np.float32)
    h0 = rng.normal(scale=0.5, size=(users, h)).astype(np.float32)
    p_seq, h_seq = form.predict(x, h0)
    hidden = h0
    worst = 0.0
    for t in range(steps):
        p, new_hidden = model.predict(x[t], hidden)
        assert new_hidden is not None
        hidden = new_hidden
        worst = max(worst, float(np.max(np.abs(p - p_seq[t]))))
    return max(worst, float(np.max(np.abs(hidden - h_seq))))


def without_sequence_form(step: bytes) -> bytes:
    """The step model's bytes without its sequence-form declaration (same graph and weights)."""
    proto = onnx.ModelProto()
    proto.ParseFromString(step)
    kept = [p for p in proto.metadata_props if p.key != SEQUENCE_FORM_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    return proto.SerializeToString()
