"""The model contract accepts the shipped models and rejects bad ones with clear messages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bytewax_fraud.errors import ModelContractError
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.inference.contract import (
    SEQUENCE_FORM_KEY,
    ModelSignature,
    check_contract,
    check_sequence_contract,
    sequence_declaration,
)

MODELS = Path(__file__).resolve().parents[3] / "models"


def _model(
    inputs: list[tuple[str, list[int | str]]],
    outputs: list[tuple[str, list[int | str]]],
    elem: int = TensorProto.FLOAT,
) -> onnx.ModelProto:
    """A tiny model whose outputs are Identity copies of its first inputs."""
    nodes = [
        helper.make_node("Identity", [inputs[min(i, len(inputs) - 1)][0]], [name])
        for i, (name, _) in enumerate(outputs)
    ]
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info(n, elem, d) for n, d in inputs],
        [helper.make_tensor_value_info(n, elem, d) for n, d in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_accepts_shipped_stateful_model() -> None:
    sig = check_contract(MODELS / "fraud_gru.onnx", expected_features=N_FEATURES)
    assert (sig.kind, sig.n_features, sig.hidden_size) == ("stateful", N_FEATURES, 128)
    decl = sequence_declaration(sig)  # the signature carries the declaration it was loaded with
    assert decl is not None and decl.file == "fraud_gru_seq.onnx"
    assert decl == sequence_declaration(MODELS / "fraud_gru.onnx")


def test_accepts_shipped_stateless_model_from_bytes() -> None:
    data = (MODELS / "fraud_stateless.onnx").read_bytes()
    sig = check_contract(data, expected_features=N_FEATURES)
    assert sig == ModelSignature(kind="stateless", n_features=N_FEATURES, hidden_size=0)


def test_accepts_path_as_str_and_proto() -> None:
    path = str(MODELS / "fraud_gru.onnx")
    assert check_contract(path).kind == "stateful"
    assert check_contract(onnx.load(path)).hidden_size == 128


def test_rejects_sequence_model() -> None:
    with pytest.raises(ModelContractError, match="rank 2"):
        check_contract(MODELS / "fraud_gru_seq.onnx")


def test_rejects_wrong_input_name() -> None:
    bad = _model([("features", ["batch", 8])], [("output_probability", ["batch", 1])])
    with pytest.raises(ModelContractError) as err:
        check_contract(bad)
    msg = str(err.value)
    assert "unexpected input/output names" in msg
    assert "expected inputs input_features [batch, F]" in msg
    assert "got inputs [features [batch, 8] float]" in msg


def test_rejects_extra_input() -> None:
    bad = _model(
        [("input_features", ["batch", 8]), ("extra", ["batch", 2])],
        [("output_probability", ["batch", 1])],
    )
    with pytest.raises(ModelContractError, match="unexpected input/output names"):
        check_contract(bad)


def test_rejects_hidden_size_mismatch() -> None:
    bad = _model(
        [("input_features", ["batch", 8]), ("input_hidden_state", ["batch", 16])],
        [("output_probability", ["batch", 1]), ("output_hidden_state", ["batch", 32])],
    )
    with pytest.raises(ModelContractError, match="hidden size mismatch.*H=16.*32"):
        check_contract(bad)


def test_rejects_dynamic_hidden_size() -> None:
    bad = _model(
        [("input_features", ["batch", 8]), ("input_hidden_state", ["batch", "h"])],
        [("output_probability", ["batch", 1]), ("output_hidden_state", ["batch", "h"])],
    )
    with pytest.raises(ModelContractError, match="fixed positive hidden size"):
        check_contract(bad)


def test_rejects_feature_count_mismatch() -> None:
    good = _model([("input_features", ["batch", 5])], [("output_probability", ["batch", 1])])
    assert check_contract(good).n_features == 5
    with pytest.raises(ModelContractError, match="F=5 but the serving features have F=8"):
        check_contract(good, expected_features=8)


def test_rejects_non_float32() -> None:
    bad = _model(
        [("input_features", ["batch", 8])],
        [("output_probability", ["batch", 1])],
        elem=TensorProto.DOUBLE,
    )
    with pytest.raises(ModelContractError, match="input_features is not float32"):
        check_contract(bad)


def test_rejects_fixed_batch() -> None:
    bad = _model([("input_features", [4, 8])], [("output_probability", [4, 1])])
    with pytest.raises(ModelContractError, match="batch axis must be dynamic"):
        check_contract(bad)


@pytest.mark.parametrize("data", [b"\xff\xfe not an onnx model \x00\x01", b""])
def test_rejects_garbage_bytes(data: bytes) -> None:
    with pytest.raises(ModelContractError, match="not a valid ONNX model"):
        check_contract(data)


def test_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="does not exist"):
        check_contract(tmp_path / "missing.onnx")


def test_rejects_external_data() -> None:
    model = _model([("input_features", ["batch", 8])], [("output_probability", ["batch", 1])])
    weight = numpy_helper.from_array(np.zeros((8, 1), dtype=np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value="weights.bin")
    model.graph.initializer.append(weight)
    with pytest.raises(ModelContractError, match="external data files \\(w\\)"):
        check_contract(model.SerializeToString())


def test_rejects_optional_input_with_default() -> None:
    model = _model(
        [("input_features", ["batch", 8]), ("scale", [1])], [("output_probability", ["batch", 1])]
    )
    model.graph.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "scale"))
    with pytest.raises(ModelContractError, match="unexpected input/output names.*scale"):
        check_contract(model)


def test_shipped_step_model_declares_its_sequence_form() -> None:
    decl = sequence_declaration(MODELS / "fraud_gru.onnx")
    assert decl is not None and decl.file == "fraud_gru_seq.onnx"
    assert decl.sha256 == hashlib.sha256((MODELS / decl.file).read_bytes()).hexdigest()
    check_sequence_contract(MODELS / decl.file, N_FEATURES, 128)
    assert sequence_declaration(MODELS / "fraud_stateless.onnx") is None


def test_sequence_contract_rejects_a_step_model_and_other_sizes() -> None:
    with pytest.raises(ModelContractError, match="input_features does not match"):
        check_sequence_contract(MODELS / "fraud_gru.onnx", N_FEATURES, 128)
    with pytest.raises(ModelContractError, match="input_hidden_state does not match"):
        check_sequence_contract(MODELS / "fraud_gru_seq.onnx", N_FEATURES, 64)
    with pytest.raises(ModelContractError, match="unexpected input/output names"):
        check_sequence_contract(MODELS / "fraud_stateless.onnx", N_FEATURES, 128)


@pytest.mark.parametrize(
    "value",
    ["not json", '{"file": "x.onnx"}', '{"file": "../x.onnx", "sha256": "ab"}', '["x", "y"]'],
)
def test_a_malformed_sequence_declaration_is_named(value: str) -> None:
    proto = onnx.load(str(MODELS / "fraud_gru.onnx"))
    helper.set_model_props(proto, {SEQUENCE_FORM_KEY: value})
    with pytest.raises(ModelContractError, match=SEQUENCE_FORM_KEY):
        sequence_declaration(proto)
