"""The model contract: which ONNX inputs and outputs a fraud model must have.

Two shapes of model are served:

* stateful: inputs `input_features` [batch, F] and `input_hidden_state` [batch, H];
  outputs `output_probability` [batch, 1] and `output_hidden_state` [batch, H];
* stateless: input `input_features` [batch, F]; output `output_probability` [batch, 1].

All tensors are float32, the batch axis is dynamic, F and H are fixed positive sizes.
`check_contract` reads only the model's metadata; it never runs the model.

A stateful model may declare a *sequence form*: the same network over a user's run of
events, `input_features` [time, batch, F] and `input_hidden_state` [batch, H] in,
`output_probability` [time, batch, 1] and `output_hidden_state` [batch, H] (the state
after the last step) out, with `time` and `batch` dynamic. The declaration is one
metadata entry of the step model (`SEQUENCE_FORM_KEY`), a JSON object naming the file
(beside the step model) and its sha256:
`{"file": "fraud_gru_seq.onnx", "sha256": "..."}`. `check_sequence_contract` checks
the file; `inference/sequence.py` loads it. A model without one is served in waves.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from bytewax_fraud.errors import ModelContractError

FEATURES = "input_features"
HIDDEN_IN = "input_hidden_state"
PROBABILITY = "output_probability"
HIDDEN_OUT = "output_hidden_state"

#: The step model's metadata key that declares its sequence form.
SEQUENCE_FORM_KEY = "bytewax_fraud.sequence_form"

EXPECTED = (
    f"expected inputs {FEATURES} [batch, F] and optionally {HIDDEN_IN} [batch, H]; "
    f"outputs {PROBABILITY} [batch, 1] (and {HIDDEN_OUT} [batch, H] when {HIDDEN_IN} is given), "
    "all float32 with a dynamic batch axis"
)


@dataclass(frozen=True)
class ModelSignature:
    """What a model that passed `check_contract` looks like."""

    kind: Literal["stateful", "stateless"]
    n_features: int
    hidden_size: int  # 0 when stateless
    #: The raw `SEQUENCE_FORM_KEY` metadata entry, if any (see `sequence_declaration`).
    sequence_form: str | None = None


def _load(model: onnx.ModelProto | bytes | str | os.PathLike[str]) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, bytes | bytearray | memoryview):
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except DecodeError as exc:
            raise ModelContractError(
                "the bytes are not a valid ONNX model (protobuf decoding failed); "
                "pass the contents of an .onnx file"
            ) from exc
        return proto
    path = os.fspath(model)
    try:
        return onnx.load(path, load_external_data=False)
    except FileNotFoundError as exc:
        raise ModelContractError(f"model file {path!r} does not exist; check the path") from exc
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelContractError(
            f"{path!r} is not a valid ONNX model ({exc}); point to an .onnx file"
        ) from exc


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in the graph: initializers and attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


def _dims(value: onnx.ValueInfoProto) -> list[int | str | None]:
    """The declared dims: an int when fixed, the dim_param when named, None when unknown."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return []
    out: list[int | str | None] = []
    for d in tensor.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _describe(values: list[onnx.ValueInfoProto]) -> str:
    parts = []
    for v in values:
        elem = TensorProto.DataType.Name(v.type.tensor_type.elem_type)
        dims = ", ".join("?" if d is None else str(d) for d in _dims(v))
        parts.append(f"{v.name} [{dims}] {elem.lower()}")
    return "[" + "; ".join(parts) + "]"


def check_contract(
    model: onnx.ModelProto | bytes | str | os.PathLike[str],
    expected_features: int | None = None,
) -> ModelSignature:
    """Check that a model follows the serving contract and return its signature.

    Args:
        model: a loaded model, the bytes of an .onnx file (never touches the filesystem),
            or a path.
        expected_features: F the serving features produce; checked when given.

    Raises:
        ModelContractError: the model is unreadable, stores weights in external data
            files, or its inputs/outputs differ from the contract. The message names the
            expected and the actual inputs and outputs.
    """
    proto = _load(model)
    graph = proto.graph
    external = [t.name for t in _tensors(graph) if t.data_location == TensorProto.EXTERNAL]
    if external:
        raise ModelContractError(
            f"the model stores tensors in external data files ({', '.join(external[:5])}); "
            "save it as one self-contained .onnx file (onnx.save(..., "
            "save_as_external_data=False))"
        )
    # Before IR 4 every initializer is also listed as a graph input; from IR 4 on an input
    # backed by an initializer is an optional input, which the contract does not allow.
    init_names = {t.name for t in graph.initializer} if proto.ir_version < 4 else set()
    inputs = [v for v in graph.input if v.name not in init_names]
    outputs = list(graph.output)
    got = f"got inputs {_describe(inputs)}, outputs {_describe(outputs)}"
    if not inputs and not outputs:
        raise ModelContractError(f"not a valid ONNX model (it has no graph); {EXPECTED}")

    def fail(why: str) -> ModelContractError:
        return ModelContractError(f"{why}: {EXPECTED}; {got}")

    in_names = sorted(v.name for v in inputs)
    out_names = sorted(v.name for v in outputs)
    if in_names == [FEATURES] and out_names == [PROBABILITY]:
        kind: Literal["stateful", "stateless"] = "stateless"
    elif in_names == sorted([FEATURES, HIDDEN_IN]) and out_names == sorted(
        [PROBABILITY, HIDDEN_OUT]
    ):
        kind = "stateful"
    else:
        raise fail("unexpected input/output names")

    by_name = {v.name: v for v in [*inputs, *outputs]}
    for name, v in by_name.items():
        if v.type.tensor_type.elem_type != TensorProto.FLOAT:
            raise fail(f"{name} is not float32")
        dims = _dims(v)
        if len(dims) != 2:
            raise fail(f"{name} must have rank 2 [batch, ...], has rank {len(dims)}")
        if isinstance(dims[0], int):
            raise fail(f"{name} has a fixed batch size {dims[0]}; the batch axis must be dynamic")

    n_features = _dims(by_name[FEATURES])[1]
    if not isinstance(n_features, int) or n_features <= 0:
        raise fail(f"{FEATURES} needs a fixed positive feature count F, has {n_features!r}")
    if expected_features is not None and n_features != expected_features:
        raise fail(
            f"{FEATURES} has F={n_features} but the serving features have F={expected_features}"
        )
    if _dims(by_name[PROBABILITY])[1] != 1:
        raise fail(f"{PROBABILITY} must be [batch, 1]")

    hidden = 0
    if kind == "stateful":
        h_in, h_out = _dims(by_name[HIDDEN_IN])[1], _dims(by_name[HIDDEN_OUT])[1]
        if not isinstance(h_in, int) or h_in <= 0:
            raise fail(f"{HIDDEN_IN} needs a fixed positive hidden size H, has {h_in!r}")
        if h_in != h_out:
            raise fail(f"hidden size mismatch: {HIDDEN_IN} has H={h_in}, {HIDDEN_OUT} has {h_out}")
        hidden = h_in
    return ModelSignature(
        kind=kind, n_features=n_features, hidden_size=hidden, sequence_form=_declared(proto)
    )


SEQUENCE_EXPECTED = (
    f"expected inputs {FEATURES} [time, batch, F] and {HIDDEN_IN} [batch, H]; outputs "
    f"{PROBABILITY} [time, batch, 1] and {HIDDEN_OUT} [batch, H], all float32, time and batch "
    "dynamic, F and H those of the step model"
)


@dataclass(frozen=True)
class SequenceDeclaration:
    """A step model's pointer to its sequence form: a file beside it and its sha256."""

    file: str
    sha256: str


def _declared(proto: onnx.ModelProto) -> str | None:
    return next((p.value for p in proto.metadata_props if p.key == SEQUENCE_FORM_KEY), None)


def sequence_declaration(
    model: ModelSignature | onnx.ModelProto | bytes | str | os.PathLike[str],
) -> SequenceDeclaration | None:
    """The sequence form a model (or the signature of a checked one) declares, or None.

    Raises:
        ModelContractError: the entry is there but is not `{"file": ..., "sha256": ...}`
            with a plain file name.
    """
    raw = model.sequence_form if isinstance(model, ModelSignature) else _declared(_load(model))
    if raw is None:
        return None
    try:
        d = json.loads(raw)
        decl = SequenceDeclaration(file=str(d["file"]), sha256=str(d["sha256"]).lower())
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelContractError(
            f"metadata {SEQUENCE_FORM_KEY}={raw!r} is not a JSON object with 'file' and 'sha256';"
            " write it with models.graphs.declare_sequence_form"
        ) from exc
    if not decl.file or os.path.basename(decl.file) != decl.file:
        raise ModelContractError(
            f"metadata {SEQUENCE_FORM_KEY} names {decl.file!r}; it must be a file name in the"
            " step model's directory, without a path"
        )
    return decl


def check_sequence_contract(
    model: onnx.ModelProto | bytes | str | os.PathLike[str], n_features: int, hidden_size: int
) -> None:
    """Check that a model is a sequence form for a step model with these F and H.

    Raises:
        ModelContractError: it is unreadable, or its inputs and outputs differ from the
            sequence contract; the message names the expected and actual ones.
    """
    proto = _load(model)
    graph = proto.graph
    init_names = {t.name for t in graph.initializer} if proto.ir_version < 4 else set()
    inputs = [v for v in graph.input if v.name not in init_names]
    outputs = list(graph.output)
    got = f"got inputs {_describe(inputs)}, outputs {_describe(outputs)}"
    by_name = {v.name: v for v in [*inputs, *outputs]}
    if sorted(v.name for v in inputs) != sorted([FEATURES, HIDDEN_IN]) or sorted(
        v.name for v in outputs
    ) != sorted([PROBABILITY, HIDDEN_OUT]):
        raise ModelContractError(f"unexpected input/output names: {SEQUENCE_EXPECTED}; {got}")
    want: dict[str, list[int | None]] = {
        FEATURES: [None, None, n_features],
        HIDDEN_IN: [None, hidden_size],
        PROBABILITY: [None, None, 1],
        HIDDEN_OUT: [None, hidden_size],
    }
    for name, dims_wanted in want.items():
        v = by_name[name]
        dims = _dims(v)
        ok = v.type.tensor_type.elem_type == TensorProto.FLOAT and len(dims) == len(dims_wanted)
        for d, w in zip(dims, dims_wanted, strict=False):
            ok = ok and (not isinstance(d, int) if w is None else d == w)
        if not ok:
            raise ModelContractError(f"{name} does not match: {SEQUENCE_EXPECTED}; {got}")
