"""The state directory's manifest: the settings the stored state depends on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from bytewax_fraud.errors import StateError

FORMAT = 1
NAME = "manifest.json"


def partition_dir(state_dir: Path, partition: int) -> Path:
    """Directory of one partition's RocksDB store."""
    return state_dir / f"partition-{partition:04d}"


def ensure_manifest(state_dir: Path, partitions: int, window: int) -> bool:
    """Create the manifest, or check that the existing one matches this run's settings.

    Returns True when the state directory is new (a fresh start).
    """
    path = state_dir / NAME
    want = {
        "format": FORMAT,
        "partitions": partitions,
        "window": window,
        "run_id": uuid.uuid4().hex,
    }
    if not path.exists():
        if any(state_dir.glob("partition-*")):
            raise StateError(
                f"{state_dir} holds partition stores but no {NAME}: the state directory is"
                " incomplete; restore it from a backup, or delete it to start fresh"
            )
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(want, indent=2) + "\n")
        tmp.replace(path)
        return True
    try:
        have = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(
            f"{path} is unreadable ({exc}): restore the state directory from a backup"
        ) from exc
    if have.get("format") != FORMAT:
        raise StateError(f"{path} has format {have.get('format')}, this build reads {FORMAT}")
    if have.get("partitions") != partitions:
        raise StateError(
            f"the state in {state_dir} was built with {have.get('partitions')} partitions but this"
            f" run asks for FRAUD_PARTITIONS={partitions}. Users are assigned to partitions by"
            " hash, so the count cannot change: set FRAUD_PARTITIONS="
            f"{have.get('partitions')}, or use a new FRAUD_STATE_DIR to start fresh"
        )
    if have.get("window") != window:
        raise StateError(
            f"the state in {state_dir} keeps {have.get('window')} amounts per user but"
            f" FRAUD_WINDOW={window}: set FRAUD_WINDOW={have.get('window')}, or use a new"
            " FRAUD_STATE_DIR"
        )
    return False


def read_partitions(state_dir: Path) -> int:
    """The partition count of an existing state directory.

    Raises:
        StateError: `state_dir` holds no state (no manifest).
    """
    path = state_dir / NAME
    if not path.exists():
        raise StateError(f"no state at {state_dir} (missing {NAME}): pass --state-dir")
    return int(json.loads(path.read_text())["partitions"])


def run_id(state_dir: Path) -> str:
    """The identity of the state directory, shared with its recovery directory."""
    return str(json.loads((state_dir / NAME).read_text()).get("run_id", ""))
