"""Model control: hot swaps by path, rejections, rollout, determinism under recovery."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import pytest
from bytewax.testing import run_main
from onnx import TensorProto, helper

from bytewax_fraud.control.commands import ControlRejected, LoadCommand
from bytewax_fraud.control.deployment import DEPLOYMENTS_KEY, rollout_bucket
from bytewax_fraud.control.gate import ModelGate
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.settings import load_settings
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.state.rocksdb import RocksStore

MODELS = Path(__file__).resolve().parents[3] / "models"
GRU = MODELS / "fraud_gru.onnx"
STATELESS = MODELS / "fraud_stateless.onnx"


def load(model_id: str, path: str, **kw: Any) -> str:
    return json.dumps({"command": "load", "model_id": model_id, "path": path, **kw})


def read_preds(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def switches(state_dir: Path, partitions: int) -> dict[int, list[dict[str, Any]]]:
    out = {}
    for p in range(partitions):
        store = RocksStore(partition_dir(state_dir, p))
        (meta,) = store.get_many([DEPLOYMENTS_KEY])
        store.close()
        out[p] = json.loads(meta or b'{"switches": []}')["switches"]
    return out


# --- the gate, command by command ---------------------------------------------------------


def _bad_signature_model(path: Path) -> None:
    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])
    node = helper.make_node("ReduceMean", ["features"], ["score"], axes=[1], keepdims=1)
    g = helper.make_graph([node], "bad", [x], [y])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def _external_data_model(path: Path) -> None:
    m = onnx.load(STATELESS)
    onnx.save_model(
        m,
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )


@pytest.mark.parametrize(
    ("kind", "setup", "command", "needle"),
    [
        ("ModelNotFound", None, {"path": "missing.onnx"}, "no model file"),
        ("ModelPathOutsideDir", None, {"path": "../outside.onnx"}, "outside the model directory"),
        ("ModelPathOutsideDir", "symlink", {"path": "link.onnx"}, "outside the model directory"),
        ("Sha256Mismatch", None, {"path": "gru.onnx", "sha256": "0" * 64}, "has sha256"),
        ("NotOnnx", "garbage", {"path": "garbage.onnx"}, "not a valid ONNX"),
        ("ContractMismatch", "badsig", {"path": "badsig.onnx"}, "input_features"),
        ("ExternalData", "external", {"path": "external.onnx"}, "external data"),
    ],
)
def test_gate_rejects_with_reason(
    model_dir: Path, kind: str, setup: str | None, command: dict[str, Any], needle: str
) -> None:
    (model_dir.parent / "outside.onnx").write_bytes(GRU.read_bytes())
    if setup == "symlink":
        os.symlink(model_dir.parent / "outside.onnx", model_dir / "link.onnx")
    elif setup == "garbage":
        (model_dir / "garbage.onnx").write_bytes(b"this is not a protobuf \x00\xff" * 10)
    elif setup == "badsig":
        _bad_signature_model(model_dir / "badsig.onnx")
    elif setup == "external":
        _external_data_model(model_dir / "external.onnx")
    gate = ModelGate(model_dir)
    with pytest.raises(ControlRejected) as err:
        gate.admit(LoadCommand(command="load", model_id="m2", **command))
    assert err.value.error_class == kind
    assert needle in err.value.reason


def test_gate_admits_a_good_model_with_its_hash(model_dir: Path) -> None:
    import hashlib

    sha = hashlib.sha256((model_dir / "stateless.onnx").read_bytes()).hexdigest()
    m = ModelGate(model_dir).admit(
        LoadCommand(command="load", model_id="s1", path="stateless.onnx", sha256=sha)
    )
    assert m.sha256 == sha and m.label == f"s1@{sha[:12]}"


# --- in the dataflow ----------------------------------------------------------------------


def settings(tmp: Path, control: Path, model_dir: Path, **kw: Any) -> Any:
    base: dict[str, Any] = {
        "events": 20_000,
        "users": 2_000,
        "partitions": 4,
        "seed": 4,
        "batch_max": 512,
        "state_dir": tmp / "state",
        "output_dir": tmp / "out",
        "status_interval": 0,
        "control_file": control,
        "model_dir": model_dir,
        "control_poll_interval": 0.05,
    }
    base.update(kw)
    return load_settings(**base)


def test_bad_commands_are_dead_letters_and_the_old_model_keeps_serving(
    tmp_path: Path, model_dir: Path
) -> None:
    (model_dir / "garbage.onnx").write_bytes(b"not onnx")
    _bad_signature_model(model_dir / "badsig.onnx")
    _external_data_model(model_dir / "external.onnx")
    control = tmp_path / "control.jsonl"
    control.write_text(
        "\n".join(
            [
                load("a", "missing.onnx"),
                load("b", "../../etc/passwd"),
                load("c", "gru.onnx", sha256="1" * 64),
                load("d", "garbage.onnx"),
                load("e", "badsig.onnx"),
                load("f", "external.onnx"),
                '{"command": "load", "model_id": ',
                '{"command": "rollback"}',
                '{"command": "explode"}',
            ]
        )
        + "\n"
    )
    s = settings(tmp_path, control, model_dir)
    run_main(build_dataflow(s))
    preds = read_preds(s.output_dir)
    assert len(preds) == 20_000
    assert {p["model"].split("@")[0] for p in preds} == {"fraud_gru"}
    dead = [
        json.loads(line) for line in (s.output_dir / "dead_letters.jsonl").read_text().splitlines()
    ]
    assert [d["stage"] for d in dead] == ["control"] * 9
    assert sorted(d["error_class"] for d in dead) == sorted(
        [
            "ModelNotFound",
            "ModelPathOutsideDir",
            "Sha256Mismatch",
            "NotOnnx",
            "ContractMismatch",
            "ExternalData",
            "InvalidJson",
            "NothingToRollBack",
            "InvalidCommand",
        ]
    )
    assert all(d["reason"] for d in dead)


def test_ten_reloads_during_a_run_drop_nothing_and_label_every_prediction(
    tmp_path: Path, model_dir: Path
) -> None:
    control = tmp_path / "control.jsonl"
    control.write_text("")
    s = settings(tmp_path, control, model_dir, events=200_000, users=20_000)
    flow = build_dataflow(s)

    def operator() -> None:
        for i in range(10):
            time.sleep(0.4)
            path = "stateless.onnx" if i % 2 else "gru.onnx"
            with open(control, "a") as f:
                f.write(load(f"v{i + 2}", path) + "\n")

    t = threading.Thread(target=operator)
    t.start()
    run_main(flow)
    t.join()
    preds = read_preds(s.output_dir)
    assert len(preds) == 200_000
    assert len({p["transaction_id"] for p in preds}) == 200_000
    log = switches(s.state_dir, 4)
    applied = {sw["serving"].split("@")[0] for sws in log.values() for sw in sws}
    assert len(applied) >= 5, applied  # most reloads landed while events were flowing
    for p in preds:
        in_force = "fraud_gru"
        for sw in log[p["partition"]]:
            if sw["from_offset"] <= p["offset"]:
                in_force = sw["serving"].split("@")[0]
        assert p["model"].split("@")[0] == in_force, p


def test_rollout_sends_a_stable_30_percent_of_users_to_the_candidate(
    tmp_path: Path, model_dir: Path
) -> None:
    control = tmp_path / "control.jsonl"
    control.write_text(load("canary", "stateless.onnx", rollout=0.3) + "\n")
    models_by_user: list[dict[str, str]] = []
    for run_dir in ("a", "b"):
        s = settings(tmp_path / run_dir, control, model_dir, users=5_000, events=30_000)
        run_main(build_dataflow(s))
        by_user: dict[str, str] = {}
        for p in read_preds(s.output_dir):
            assert by_user.setdefault(p["user_id"], p["model"]) == p["model"]  # sticky
            by_user[p["user_id"]] = p["model"]
        models_by_user.append(by_user)
    assert models_by_user[0] == models_by_user[1]
    counts = Counter(m.split("@")[0] for m in models_by_user[0].values())
    share = counts["canary"] / sum(counts.values())
    assert 0.28 <= share <= 0.32, counts
    assert all(
        (m.startswith("canary@")) == (rollout_bucket(u) < 0.3) for u, m in models_by_user[0].items()
    )
