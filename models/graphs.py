"""Build the fraud models' ONNX graphs directly from trained weights (opset 17).

Three graphs share one weight format:

* GRU step model (serving): `input_features` [batch, F], `input_hidden_state` [batch, H]
  -> `output_probability` [batch, 1], `output_hidden_state` [batch, H].
* GRU sequence model (serving a user's run of events in one call, and offline
  evaluation): `input_features` [T, batch, F], `input_hidden_state` [batch, H]
  -> `output_probability` [T, batch, 1], `output_hidden_state` [batch, H]. The step
  model declares it (`declare_sequence_form`, see bytewax_fraud/inference/contract.py).
* Stateless model: `input_features` [batch, F] -> `output_probability` [batch, 1], using only
  the features it was trained on (gathered inside the graph).

Weights come in PyTorch's layout (`nn.GRU` gate order r, z, n); ONNX orders gates z, r, h,
so they are reordered here. `linear_before_reset=1` matches PyTorch's GRU.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from bytewax_fraud.inference.contract import SEQUENCE_FORM_KEY

OPSET = 17
F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Dense:
    """A dense layer `x @ weight + bias`; weight is [in, out]."""

    weight: F32
    bias: F32


@dataclass(frozen=True)
class GruWeights:
    """A one-layer GRU and its MLP head, in PyTorch's layout.

    `mean`/`std` standardise the features before the GRU; the head's layers have ReLU
    between them and a sigmoid after the last one (whose output size is 1).
    """

    mean: F32  # [F]
    std: F32  # [F]
    weight_ih: F32  # [3H, F], gates r, z, n
    weight_hh: F32  # [3H, H]
    bias_ih: F32  # [3H]
    bias_hh: F32  # [3H]
    head: tuple[Dense, ...]

    @property
    def n_features(self) -> int:
        """F."""
        return int(self.weight_ih.shape[1])

    @property
    def hidden_size(self) -> int:
        """H."""
        return int(self.weight_hh.shape[1])


@dataclass(frozen=True)
class MlpWeights:
    """An MLP over a subset of the features (ReLU between layers, sigmoid at the end)."""

    n_features: int
    feature_indices: tuple[int, ...]
    mean: F32  # [len(feature_indices)]
    std: F32
    layers: tuple[Dense, ...]


def _rzn_to_zrh(w: F32, h: int) -> F32:
    """Reorder PyTorch's gate blocks (r, z, n) along axis 0 into ONNX's (z, r, h)."""
    r, z, n = w[:h], w[h : 2 * h], w[2 * h :]
    return np.concatenate([z, r, n], axis=0)


class _Builder:
    """Collects initializers and nodes with unique names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def mlp(self, x: str, layers: tuple[Dense, ...], prefix: str, out: str) -> str:
        """Dense layers with ReLU between them and a sigmoid producing `out`."""
        for i, layer in enumerate(layers):
            w = self.const(f"{prefix}_w{i}", layer.weight)
            b = self.const(f"{prefix}_b{i}", layer.bias)
            x = self.op("Add", [self.op("MatMul", [x, w], f"{prefix}_mm{i}"), b], f"{prefix}_z{i}")
            if i < len(layers) - 1:
                x = self.op("Relu", [x], f"{prefix}_relu{i}")
        return self.op("Sigmoid", [x], out)

    def model(
        self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], name: str
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            producer_name="bytewax-fraud",
        )
        # IR 8 keeps the files loadable by onnxruntime releases older than the onnx package.
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def _gru_core(b: _Builder, w: GruWeights, x_seq: str, h0: str) -> tuple[str, str]:
    """GRU over x_seq [T, batch, F] from h0 [1, batch, H]; returns (Y [T,1,batch,H], Y_h)."""
    h = w.hidden_size
    mean = b.const("feature_mean", w.mean)
    std = b.const("feature_std", w.std)
    xn = b.op("Div", [b.op("Sub", [x_seq, mean], "x_centred"), std], "x_scaled")
    big_w = b.const("gru_W", _rzn_to_zrh(w.weight_ih, h)[None])
    big_r = b.const("gru_R", _rzn_to_zrh(w.weight_hh, h)[None])
    bias = np.concatenate([_rzn_to_zrh(w.bias_ih, h), _rzn_to_zrh(w.bias_hh, h)])[None]
    big_b = b.const("gru_B", bias)
    b.nodes.append(
        helper.make_node(
            "GRU",
            [xn, big_w, big_r, big_b, "", h0],
            ["gru_Y", "gru_Y_h"],
            name="gru",
            hidden_size=h,
            linear_before_reset=1,
        )
    )
    return "gru_Y", "gru_Y_h"


def _value(name: str, dims: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def gru_step_model(w: GruWeights) -> onnx.ModelProto:
    """The serving model: one step of the GRU per row, hidden state in and out."""
    b = _Builder()
    f, h = w.n_features, w.hidden_size
    axis0 = b.const("axis0", [0], np.int64)
    x = b.op("Unsqueeze", ["input_features", axis0], "x_seq")
    h0 = b.op("Unsqueeze", ["input_hidden_state", axis0], "h0")
    _, y_h = _gru_core(b, w, x, h0)
    h_new = b.op("Squeeze", [y_h, axis0], "output_hidden_state")
    b.mlp(h_new, w.head, "head", "output_probability")
    return b.model(
        [_value("input_features", ["batch", f]), _value("input_hidden_state", ["batch", h])],
        [_value("output_probability", ["batch", 1]), _value("output_hidden_state", ["batch", h])],
        "fraud_gru_step",
    )


def gru_sequence_model(w: GruWeights) -> onnx.ModelProto:
    """The same GRU over whole sequences [T, batch, F], for offline evaluation."""
    b = _Builder()
    f, h = w.n_features, w.hidden_size
    axis0 = b.const("axis0", [0], np.int64)
    axis1 = b.const("axis1", [1], np.int64)
    h0 = b.op("Unsqueeze", ["input_hidden_state", axis0], "h0")
    y, y_h = _gru_core(b, w, "input_features", h0)
    hs = b.op("Squeeze", [y, axis1], "hidden_states")
    b.op("Squeeze", [y_h, axis0], "output_hidden_state")
    b.mlp(hs, w.head, "head", "output_probability")
    return b.model(
        [
            _value("input_features", ["time", "batch", f]),
            _value("input_hidden_state", ["batch", h]),
        ],
        [
            _value("output_probability", ["time", "batch", 1]),
            _value("output_hidden_state", ["batch", h]),
        ],
        "fraud_gru_sequence",
    )


def declare_sequence_form(step: onnx.ModelProto, file: str, sequence: bytes) -> onnx.ModelProto:
    """The step model declaring `file` (the bytes `sequence`, saved beside it) as its sequence form.

    Only the metadata changes: the graph and the weights stay as they are.
    """
    out = onnx.ModelProto()
    out.CopyFrom(step)
    kept = [p for p in out.metadata_props if p.key != SEQUENCE_FORM_KEY]
    del out.metadata_props[:]
    out.metadata_props.extend(kept)
    value = json.dumps({"file": file, "sha256": hashlib.sha256(sequence).hexdigest()})
    helper.set_model_props(out, {**{p.key: p.value for p in kept}, SEQUENCE_FORM_KEY: value})
    return out


def stateless_model(w: MlpWeights) -> onnx.ModelProto:
    """The stateless model: an MLP over the gathered feature subset."""
    b = _Builder()
    idx = b.const("feature_indices", list(w.feature_indices), np.int64)
    x = b.op("Gather", ["input_features", idx], "x_subset", axis=1)
    mean = b.const("feature_mean", w.mean)
    std = b.const("feature_std", w.std)
    xn = b.op("Div", [b.op("Sub", [x, mean], "x_centred"), std], "x_scaled")
    b.mlp(xn, w.layers, "mlp", "output_probability")
    return b.model(
        [_value("input_features", ["batch", w.n_features])],
        [_value("output_probability", ["batch", 1])],
        "fraud_stateless",
    )
