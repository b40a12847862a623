"""Model control across a crash: a switch made just before a kill survives the restart."""

from __future__ import annotations

import json
import time
from pathlib import Path

from recovery_harness import FileOutputs, JobDirs, kill_running, predictions, run, start


def test_crash_between_a_switch_and_the_next_snapshot(tmp_path: Path, model_dir: Path) -> None:
    """The switch is applied, then the job dies before any snapshot. On restart the
    control log is empty: the deployment must come back from the partition state, and
    the replayed events must be scored exactly as in the clean run."""
    control = tmp_path / "control.jsonl"
    command = json.dumps(
        {"command": "load", "model_id": "canary", "path": "stateless.onnx", "rollout": 0.5}
    )
    command += "\n"
    env = {
        "FRAUD_EVENTS": 120_000,
        "FRAUD_USERS": 10_000,
        "FRAUD_PARTITIONS": 4,
        "FRAUD_CONTROL_FILE": control,
        "FRAUD_MODEL_DIR": model_dir,
        "FRAUD_SNAPSHOT_INTERVAL": 60,  # no snapshot before the kill
    }
    control.write_text(command)
    clean = JobDirs(tmp_path / "clean")
    run(clean, **env)
    crashed = JobDirs(tmp_path / "crashed")
    p = start(crashed, **env)
    outputs = FileOutputs(crashed.out / "predictions.jsonl")
    # Kill it mid-run, after the switch (applied before the first event) has scored some.
    deadline = time.monotonic() + 120
    while outputs.count() < 20_000:
        assert p.poll() is None, "the job ended before the kill"
        assert time.monotonic() < deadline, "the job wrote too little within 120 s"
        time.sleep(0.02)
    assert kill_running([p], outputs, 120_000) >= 20_000
    control.write_text("")
    run(crashed, **env)
    got, want = predictions(crashed.out), predictions(clean.out)
    assert len(want) == 120_000
    assert got == want
    assert {json.loads(v)["model"].split("@")[0] for v in want.values()} == {"canary", "fraud_gru"}
