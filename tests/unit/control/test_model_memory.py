"""Model swaps release what no deployment uses: sessions and memory stay flat.

A job that swaps models keeps only the sessions its deployments, candidates and
rollback targets still use; one file loaded under many model ids is one session.
"""

from __future__ import annotations

import gc
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.control.commands import ControlItem, ControlMessage
from bytewax_fraud.control.gate import CommandValidator, ModelGate
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import live_sessions
from bytewax_fraud.parse import parse_batch
from bytewax_fraud.partition_logic import PartitionBatch, PartitionConfig, PartitionLogic
from bytewax_fraud.records import EventBatch, RawBatch

GRU = Path(__file__).resolve().parents[3] / "models" / "fraud_gru.onnx"


def _variant(path: Path, note: str) -> None:
    """The GRU with another doc string: a different file (and sha256), the same graph."""
    model = onnx.load(GRU)
    model.doc_string = note
    onnx.save(model, path)


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status on this platform")


def _events(offset: int, n: int = 50) -> EventBatch:
    values = list(itertools.islice(TransactionGenerator(users=100, seed=offset).events(), n))
    offsets = np.arange(offset, offset + n, dtype=np.int64)
    raw = RawBatch("g", 0, offsets, list(values), None, None, 0)
    events, dead = parse_batch(raw)
    assert events is not None and not dead
    return events


def _command(seq: int, value: dict[str, object]) -> ControlMessage:
    return ControlMessage(0, seq, json.dumps(value).encode(), "control-test")


@pytest.fixture()
def swapping(tmp_path: Path) -> tuple[PartitionLogic, CommandValidator]:
    _variant(tmp_path / "a.onnx", "a")
    _variant(tmp_path / "b.onnx", "b")
    _variant(tmp_path / "c.onnx", "c")
    loader = ModelLoader(warmup_batch=8)
    config = PartitionConfig(
        state_dir=None,
        model=loader.load(tmp_path / "a.onnx", model_id="start"),
        window=10,
        ttl_seconds=1e9,
        batch_max=256,
        sweep_interval=1e9,
        sweep_chunk=100,
        restore_model=lambda ref: loader.load(ref["path"]),
    )
    return PartitionLogic(config, None), CommandValidator(ModelGate(tmp_path, loader))


def _apply(
    logic: PartitionLogic, validator: CommandValidator, seq: int, cmd: dict[str, object]
) -> str:
    item = validator.validate(_command(seq, cmd))
    assert isinstance(item, ControlItem), item
    out, _ = logic.on_batch(
        [PartitionBatch(0, [_events(seq * 100), item, _events(seq * 100 + 50)])]
    )
    assert [d for x in out for d in x.dead_letters] == []
    assert logic._scorer is not None
    return logic._scorer.deployment.label()


def test_fifty_swaps_between_two_files_keep_sessions_and_memory_flat(
    swapping: tuple[PartitionLogic, CommandValidator],
) -> None:
    logic, validator = swapping
    sessions: list[int] = []
    rss: list[int] = []
    for seq in range(50):
        path = "a.onnx" if seq % 2 else "b.onnx"
        label = _apply(
            logic, validator, seq, {"command": "load", "model_id": f"m{seq}", "path": path}
        )
        assert label.startswith(f"m{seq}@")
        gc.collect()
        sessions.append(live_sessions())
        rss.append(_rss_bytes())
    # Two files, fifty model ids: the first swap adds b's session, and nothing after it.
    assert len(set(sessions[1:])) == 1, sessions
    # Before sessions were released, these 40 swaps added ~27 MiB (40 sessions);
    # what is left is allocator noise.
    growth = rss[-1] - rss[9]
    assert growth < 8 * 1024**2, f"RSS grew {growth / 1024**2:.1f} MiB over 40 swaps: {rss}"


def test_a_model_rolled_back_is_released(swapping: tuple[PartitionLogic, CommandValidator]) -> None:
    logic, validator = swapping
    gc.collect()
    before = live_sessions()
    _apply(logic, validator, 1, {"command": "load", "model_id": "c1", "path": "c.onnx"})
    _apply(
        logic, validator, 2, {"command": "load", "model_id": "c2", "path": "c.onnx", "rollout": 0.5}
    )
    gc.collect()
    assert live_sessions() == before + 1  # one file under two ids: one session
    assert logic._scorer is not None and logic._scorer.deployment.candidate is not None
    _apply(logic, validator, 3, {"command": "rollback"})
    assert _apply(logic, validator, 4, {"command": "rollback"}).startswith("start@")
    gc.collect()
    assert live_sessions() == before  # no deployment, candidate or rollback target uses c


def test_the_validator_does_not_keep_a_model_alive(tmp_path: Path) -> None:
    """Validated outcomes hold their model weakly: a partition that reaches a command after
    every deployment dropped its model gets it loaded again, the same model."""
    _variant(tmp_path / "c.onnx", "c")
    validator = CommandValidator(ModelGate(tmp_path, ModelLoader(warmup_batch=8)))
    gc.collect()
    before = live_sessions()
    msg = json.dumps({"command": "load", "model_id": "c", "path": "c.onnx"}).encode()
    first = validator.validate(ControlMessage(0, 7, msg, "control-test"))
    assert isinstance(first, ControlItem) and first.model is not None
    sha = first.model.sha256
    assert live_sessions() == before + 1
    del first
    gc.collect()
    assert live_sessions() == before  # the validator's record of seq 7 holds no session
    late = validator.validate(ControlMessage(3, 7, msg, "control-test"))
    assert isinstance(late, ControlItem) and late.model is not None
    assert (late.partition, late.model.sha256, late.model.model_id) == (3, sha, "c")
