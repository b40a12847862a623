"""Which input a state directory was built from, so a run on another input is refused.

The state's replay fences and outbox are keyed by the offsets of the input that
wrote them: Kafka offsets of one topic, the generator's offsets, or positions
in files (`file_input.py`). Another input numbers its messages differently, so
events would be taken for replays and skipped, or replays for new events. The
first run records its input kind in `state_dir/input-kind.json`; later runs
must name the same kind, unless the state is handed over first
(`state/handover.py`, docs/files.md "Warm start").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bytewax_fraud.errors import StateError

NAME = "input-kind.json"


def check_input_kind(state_dir: Path, kind: str) -> None:
    """Record `kind` (e.g. "kafka", "files", "generator") for new state; refuse another one.

    Raises:
        StateError: The state was built from another kind of input.
    """
    if not state_dir.is_dir():
        return
    path = state_dir / NAME
    if path.exists():
        before = json.loads(path.read_text()).get("kind")
        if before != kind:
            raise StateError(
                f"the state in {state_dir} was built from the {before} input and this run reads"
                f" {kind}: their offsets number different messages, so the state's replay fences"
                " would skip new events. Fix: to continue from this state, hand it over first"
                f" (python -m bytewax_fraud.state --state-dir {state_dir} handover --to {kind}"
                " --recovery-dir NEW_DIR, then run with FRAUD_RECOVERY_DIR=NEW_DIR; docs/files.md,"
                " 'Warm start'); or use a new FRAUD_STATE_DIR and FRAUD_RECOVERY_DIR"
            )
        return
    record_input_kind(state_dir, kind)


def record_input_kind(state_dir: Path, kind: str) -> None:
    """Say (atomically) that the state in `state_dir` now follows input `kind`."""
    path = state_dir / NAME
    tmp = path.with_name(f"{NAME}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"kind": kind}) + "\n")
    tmp.replace(path)
