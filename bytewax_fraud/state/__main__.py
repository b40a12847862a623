"""Inspect the state: `python -m bytewax_fraud.state show USER_ID` or `... stats`.

Reads the stores of `FRAUD_STATE_DIR` (or `--state-dir`) read-only; stop the
job first or point it at a copy, since RocksDB allows one writer.
`... handover --to kafka --recovery-dir DIR` prepares a file replay's state to
seed a run on another input (`handover.py`, docs/files.md "Warm start").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from bytewax_fraud.admission.event_time import CLOCK_KEY, PartitionClock, iso
from bytewax_fraud.errors import FraudError
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.state.base import USER_PREFIX, user_key
from bytewax_fraud.state.codec import decode_one
from bytewax_fraud.state.handover import hand_over
from bytewax_fraud.state.manifest import partition_dir, read_partitions
from bytewax_fraud.state.rocksdb import RocksStore, scan_prefix


def show(state_dir: Path, user_id: str) -> dict[str, object] | None:
    """The decoded record of one user, or None if the user has no state."""
    partitions = read_partitions(state_dir)
    p = partition_for(user_id, partitions)
    store = RocksStore(partition_dir(state_dir, p))
    try:
        (value,) = store.get_many([user_key(user_id)])
    finally:
        store.close()
    if value is None:
        return None
    return {"user_id": user_id, "partition": p, **decode_one(value)}


def stats(state_dir: Path) -> dict[str, object]:
    """Users, outbox entries and the event-time clock of each partition."""
    partitions = read_partitions(state_dir)
    per: dict[int, dict[str, int | str | None]] = {}
    for p in range(partitions):
        path = partition_dir(state_dir, p)
        if not path.exists():
            per[p] = {"users": 0, "outbox": 0, "event_clock": None}
            continue
        store = RocksStore(path)
        try:
            (clock,) = store.get_many([CLOCK_KEY])
            now = PartitionClock.from_bytes(clock).now
            per[p] = {
                "users": _count(store, USER_PREFIX),
                "outbox": _count(store, b"o"),
                # The partition's event-time clock (docs/event-time.md); None until defined.
                "event_clock": None if now == -math.inf else iso(now),
            }
        finally:
            store.close()
    total = sum(int(v["users"] or 0) for v in per.values())
    return {"partitions": partitions, "users": total, "per_partition": per}


def _count(store: RocksStore, prefix: bytes) -> int:
    return sum(len(items) for items in scan_prefix(store, prefix))


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bytewax_fraud.state",
        description="Inspect per-user state. Stop the job first (RocksDB has one writer).",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="state directory (default: FRAUD_STATE_DIR or ./state)",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("show", help="print one user's record as JSON")
    s.add_argument("user_id")
    sub.add_parser("stats", help="count users per partition")
    h = sub.add_parser(
        "handover",
        help="clear the state's positions in its input so it seeds a run on another input",
    )
    h.add_argument("--to", choices=["kafka", "files", "generator"], required=True)
    h.add_argument(
        "--recovery-dir", type=Path, required=True, help="the next run's (new) FRAUD_RECOVERY_DIR"
    )
    args = parser.parse_args(argv)
    state_dir = args.state_dir or Path(os.environ.get("FRAUD_STATE_DIR", "state"))
    try:
        if args.cmd == "show":
            rec = show(state_dir, args.user_id)
            if rec is None:
                print(f"no state for user {args.user_id!r}", file=sys.stderr)
                return 1
            print(json.dumps(rec, indent=2))
        elif args.cmd == "handover":
            done = hand_over(state_dir, args.recovery_dir, args.to)
            print(
                f"handed {done.users:,} users of {done.partitions} partitions over to the"
                f" {done.kind} input ({done.outbox_entries:,} outbox entries dropped); run it"
                f" with FRAUD_STATE_DIR={state_dir} FRAUD_RECOVERY_DIR={args.recovery_dir}",
                file=sys.stderr,
            )
        else:
            print(json.dumps(stats(state_dir), indent=2))
    except FraudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
