"""Hand a state over to another input: a file replay's state seeds a Kafka run (warm start).

The user records, the event-time clock and the serving models carry over: the
users are in the same state partitions whatever the input (murmur2 of the user
id), and TTL and lateness are decided on event times. What is keyed by the old
input's offsets does not: each record's replay fence (`last_offset`), the
outbox, the high-water and replay-floor marks, the control log's applied
sequence number and its switch points, and the recovery directory (it holds
positions in the old input). `hand_over` clears those, records the new input
kind, and creates a new, empty recovery directory paired with the state, so the
next run starts its input from the beginning (or `FRAUD_START=latest`) on top of
the replay's user state. Run it with the job stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bytewax_fraud.connectors.input_kind import record_input_kind
from bytewax_fraud.control.deployment import DEPLOYMENTS_KEY
from bytewax_fraud.errors import StateError
from bytewax_fraud.recovery import prepare_recovery
from bytewax_fraud.state.base import (
    HIGH_WATER_KEY,
    OUTBOX_PREFIX,
    REPLAY_FLOOR_KEY,
    USER_PREFIX,
)
from bytewax_fraud.state.codec import HEADER_BYTES, NO_OFFSET
from bytewax_fraud.state.manifest import partition_dir, read_partitions, run_id
from bytewax_fraud.state.rocksdb import RocksStore, scan_prefix

#: Byte range of `last_offset` in a record's header (codec.py: the header's last field).
_FENCE = slice(HEADER_BYTES - 8, HEADER_BYTES)
_NO_FENCE = np.int64(NO_OFFSET).astype("<i8").tobytes()


@dataclass(frozen=True)
class HandOver:
    """What `hand_over` did."""

    partitions: int
    users: int
    outbox_entries: int
    kind: str


def without_fence(record: bytes) -> bytes:
    """A user record whose replay fence says "no event applied yet" (all else unchanged)."""
    if len(record) < HEADER_BYTES:
        raise StateError(f"a user record of {len(record)} bytes is shorter than its header")
    return record[: _FENCE.start] + _NO_FENCE + record[_FENCE.stop :]


def without_positions(deployments: bytes) -> bytes:
    """The control log with its stack (the serving models) but no position in a control input."""
    raw = json.loads(deployments)
    raw["applied_seq"] = -1
    raw["switches"] = []
    return json.dumps(raw, sort_keys=True).encode()


def hand_over(state_dir: Path, recovery_dir: Path, kind: str) -> HandOver:
    """Prepare the state in `state_dir` for a run on input `kind`, with `recovery_dir` new.

    Raises:
        StateError: There is no state, or `recovery_dir` already holds snapshots.
    """
    partitions = read_partitions(state_dir)
    if recovery_dir.exists() and any(recovery_dir.iterdir()):
        raise StateError(
            f"{recovery_dir} is not empty: the run after a hand-over needs a new recovery"
            " directory (the old one holds positions in the old input); name a new one"
        )
    users = outbox = 0
    for p in range(partitions):
        path = partition_dir(state_dir, p)
        if not path.exists():
            continue
        store = RocksStore(path)
        try:
            users += _refence(store)
            outbox += sum(len(c) for c in scan_prefix(store, OUTBOX_PREFIX))
            store.delete_range(OUTBOX_PREFIX, bytes([OUTBOX_PREFIX[0] + 1]))
            (log,) = store.get_many([DEPLOYMENTS_KEY])
            keys, values = ([DEPLOYMENTS_KEY], [without_positions(log)]) if log else ([], [])
            store.write(keys, values, [HIGH_WATER_KEY, REPLAY_FLOOR_KEY])
            store.sync()
        finally:
            store.close()
    # The event-time clock (CLOCK_KEY) stays: the next input continues the replay's time.
    record_input_kind(state_dir, kind)
    # A new recovery directory paired with this state, with no snapshot in it.
    prepare_recovery(recovery_dir, state_dir, run_id(state_dir), True, partitions, 0.0)
    return HandOver(partitions, users, outbox, kind)


def _refence(store: RocksStore) -> int:
    """Clear the replay fence of every user record; returns how many there are."""
    n = 0
    for items in scan_prefix(store, USER_PREFIX):
        store.write([k for k, _ in items], [without_fence(v) for _, v in items])
        n += len(items)
    return n
