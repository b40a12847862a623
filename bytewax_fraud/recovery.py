"""Recovery: Bytewax snapshots and the RocksDB state as one consistent unit.

Bytewax snapshots input offsets (and each partition logic's few counters); the
user state lives in RocksDB and is *not* rolled back on resume. Consistency
comes from fencing, not from rollback:

- every user record holds the offset of the last event applied to it, so a
  replayed event is recognised and not applied twice;
- every prediction is also written to an outbox keyed by offset, in the same
  atomic batch as the state, so a replayed event re-emits its prediction
  byte for byte;
- a snapshot first syncs RocksDB's write-ahead log, so everything the committed
  offsets cover is durable.

The state and recovery directories carry the same run id, so a recovery
directory from another run (or a missing one) is a named error at start,
never a silent fresh start.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir

from bytewax_fraud.errors import RecoveryError

MARKER = "fraud-run.json"


def prepare_recovery(
    recovery_dir: Path | None,
    state_dir: Path,
    run_id: str,
    fresh_state: bool,
    partitions: int,
    backup_interval: float,
) -> RecoveryConfig | None:
    """Check (or create) the recovery directory of this state; None when recovery is off.

    `partitions` recovery partitions are created: as many as state partitions,
    since more workers than that would have nothing to do.
    """
    if recovery_dir is None:
        return None
    marker = recovery_dir / MARKER
    parts = sorted(recovery_dir.glob("part-*.sqlite3")) if recovery_dir.exists() else []
    if fresh_state:
        if parts or marker.exists():
            raise RecoveryError(
                f"the recovery directory {recovery_dir} holds snapshots of another run, but the"
                f" state directory {state_dir} is new. Point FRAUD_RECOVERY_DIR at the recovery"
                " directory that belongs to this state, or delete it to start fresh"
            )
        recovery_dir.mkdir(parents=True, exist_ok=True)
        init_db_dir(recovery_dir, partitions)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"run_id": run_id, "state_dir": str(state_dir)}) + "\n")
        tmp.replace(marker)
    else:
        if not parts:
            raise RecoveryError(
                f"the state in {state_dir} has been used, but the recovery directory"
                f" {recovery_dir} has no snapshots, so the input would start again from the"
                " beginning and be applied twice. Restore the recovery directory from the backup"
                " taken with the state, or delete the state directory to start fresh"
            )
        try:
            owner = json.loads(marker.read_text()).get("run_id")
        except (OSError, ValueError) as exc:
            raise RecoveryError(
                f"{marker} is missing or unreadable ({exc}): the recovery directory is damaged or"
                " was not made by this job; restore it from a backup together with the state"
            ) from exc
        _check_partitions(parts)
        if owner != run_id:
            raise RecoveryError(
                f"the recovery directory {recovery_dir} belongs to another run (run id {owner},"
                f" the state in {state_dir} has {run_id}). Restore the pair from the same backup,"
                " or delete both to start fresh"
            )
    return RecoveryConfig(str(recovery_dir), timedelta(seconds=backup_interval))


def _check_partitions(parts: list[Path]) -> None:
    for part in parts:
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as conn:
                ok = conn.execute("PRAGMA quick_check").fetchone()
        except sqlite3.Error as exc:
            ok = (str(exc),)
        if ok != ("ok",):
            raise RecoveryError(
                f"the recovery partition {part} is damaged ({ok[0]}): restore the recovery and"
                " state directories together from the same backup, or delete both to start fresh"
            )
