"""Snapshot cost with a large state: `python -m bytewax_fraud.tools.snapshot_cost --users 1000000`.

1. Builds a partitioned RocksDB state of `--users` user records (encoded with the
   job's codec, written in WriteBatches of 10k to the partition stores, placed by
   murmur2 like the job places them): the same on-disk state as a long run.
2. Opens the partitions as a resumed job does (`PartitionLogic` with a resume
   snapshot) and, while a stream of score-like WriteBatches is written (1024
   user records + one outbox entry of 1024 lines + the high-water mark, as
   `PartitionScorer` writes them), calls the real `PartitionLogic.snapshot()` between bursts:
   WAL sync (`flush_wal(True)`), outbox pruning (`delete_range`) and
   `estimate_keys`. Reports ms per partition snapshot and per epoch (all partitions
   one after the other, as one worker closes an epoch).
3. Closes the stores and times a resume: opening every partition, then each
   partition's first batch of 1024 events through `on_batch` (multi-get, waves,
   ONNX, write), against a later (warm) batch.
4. Reports the disk used by the state, and optionally (`--job-events N`) runs the
   real job (`python -m bytewax_fraud`, recovery on) with `--users` users for N
   events and reports its state and recovery directories.

Prints a table; `--json PATH` writes the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bytewax_fraud.connectors.generator import user_id, user_id_bytes
from bytewax_fraud.errors import FraudError
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.partition_logic import PartitionBatch, PartitionConfig, PartitionLogic
from bytewax_fraud.partitioning import murmur2_many
from bytewax_fraud.records import Event, EventBatch, Transaction
from bytewax_fraud.settings import DEFAULT_MODEL
from bytewax_fraud.state.base import HIGH_WATER_KEY
from bytewax_fraud.state.base import user_key as store_key
from bytewax_fraud.state.codec import UserStates, encode
from bytewax_fraud.state.manifest import ensure_manifest, partition_dir
from bytewax_fraud.state.outbox import encode_entry
from bytewax_fraud.state.rocksdb import RocksStore

T0 = 1_700_000_000.0
#: Offsets below this are "history" (the records' last offsets); the bench writes above it.
BASE_OFFSET = 10_000_000
WRITE_CHUNK = 10_000


def du(path: Path) -> int:
    """Bytes used on disk under `path` (allocated blocks, like `du`)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):  # RocksDB removed it meanwhile
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def random_states(n: int, window: int, hidden: int, rng: np.random.Generator) -> UserStates:
    """`n` plausible user records: a full window, a hidden state, a last event in the past."""
    return UserStates(
        count=np.full(n, window, np.int64),
        last_ts=T0 + rng.uniform(0, 86400.0, n),
        last_offset=rng.integers(0, BASE_OFFSET, n).astype(np.int64),
        model_tag=np.zeros(n, np.uint64),
        amounts=rng.lognormal(3.5, 1.0, (n, window)).astype(np.float32),
        merchants=rng.integers(0, 50_000, (n, window)).astype(np.uint32),
        hidden=rng.standard_normal((n, hidden)).astype(np.float32),
    )


def build_state(
    state_dir: Path, users: int, partitions: int, window: int, model: LoadedModel, seed: int
) -> dict[str, Any]:
    """Write `users` records to the partition stores; returns timing and per-partition counts."""
    ensure_manifest(state_dir, partitions, window)
    rng = np.random.default_rng(seed)
    stores = [RocksStore(partition_dir(state_dir, p)) for p in range(partitions)]
    counts = [0] * partitions
    t = time.perf_counter()
    try:
        for lo in range(0, users, WRITE_CHUNK):
            idx = np.arange(lo, min(lo + WRITE_CHUNK, users), dtype=np.int64)
            part = (murmur2_many(user_id_bytes(idx)).astype(np.int64) & 0x7FFFFFFF) % partitions
            recs = encode(random_states(len(idx), window, model.hidden_size, rng), model.tag)
            for p in range(partitions):
                rows = np.flatnonzero(part == p).tolist()
                stores[p].write(
                    [store_key(user_id(int(idx[i]))) for i in rows], [recs[i] for i in rows]
                )
                counts[p] += len(rows)
        for s in stores:
            s.write([HIGH_WATER_KEY], [BASE_OFFSET.to_bytes(8, "big")])
            s.sync()
    finally:
        for s in stores:
            s.close()
    return {
        "seconds": time.perf_counter() - t,
        "users_per_partition": counts,
        "record_bytes": len(recs[0]),
    }


def users_by_partition(users: int, partitions: int) -> list[np.ndarray]:
    """The user indices of each partition (murmur2 of the user id, as Kafka places them)."""
    idx = np.arange(users, dtype=np.int64)
    part = (murmur2_many(user_id_bytes(idx)).astype(np.int64) & 0x7FFFFFFF) % partitions
    return [idx[part == p] for p in range(partitions)]


def partition_config(
    state_dir: Path, model: LoadedModel, window: int, kept: int
) -> PartitionConfig:
    return PartitionConfig(
        state_dir=state_dir,
        model=model,
        window=window,
        ttl_seconds=30 * 86400.0,
        batch_max=1024,
        sweep_interval=1e9,  # no sweep: only the snapshot is measured
        sweep_chunk=10_000,
        restore_model=lambda _meta: model,
        kept_marks=kept,
    )


def resumed_logics(config: PartitionConfig, partitions: int) -> tuple[list[PartitionLogic], float]:
    """Every partition's logic as a resume builds it (opens its store); and the seconds taken."""
    t = time.perf_counter()
    logics = [
        PartitionLogic(
            config,
            {
                "partition": p,
                "high_water": BASE_OFFSET,
                "watermark": T0 + 86400.0,
                "marks": [],
                "cursor": None,
            },
        )
        for p in range(partitions)
    ]
    return logics, time.perf_counter() - t


def measure_snapshots(
    logics: list[PartitionLogic],
    members: list[np.ndarray],
    model: LoadedModel,
    window: int,
    snapshots: int,
    warmup: int,
    batches: int,
    batch: int,
    seed: int,
) -> dict[str, Any]:
    """Write `batches` score-like batches per partition, then snapshot every partition; repeat."""
    rng = np.random.default_rng(seed + 1)
    line = b'{"transaction_id":"t-0000000000","user_id":"u0000000","probability":0.01,' + b"x" * 150
    per_partition: list[float] = []
    per_epoch: list[float] = []
    write_s = 0.0
    written = 0
    for n in range(warmup + snapshots):
        for logic in logics:
            scorer = logic._scorer
            assert scorer is not None
            mine = members[scorer.partition]
            for _ in range(batches):
                users = rng.choice(mine, batch)
                recs = encode(random_states(batch, window, model.hidden_size, rng), model.tag)
                first = scorer.high_water
                offsets = np.arange(first, first + batch, dtype=np.int64)
                scorer.high_water = first + batch
                t = time.perf_counter()
                box_key, box = encode_entry(offsets, [line] * batch)
                scorer.store.write(
                    [store_key(user_id(int(u))) for u in users.tolist()]
                    + [box_key, HIGH_WATER_KEY],
                    recs + [box, scorer.high_water.to_bytes(8, "big")],
                )
                write_s += time.perf_counter() - t
                written += batch
        epoch = 0.0
        for logic in logics:
            t = time.perf_counter()
            logic.snapshot()
            took = time.perf_counter() - t
            epoch += took
            if n >= warmup:
                per_partition.append(took * 1000)
        if n >= warmup:
            per_epoch.append(epoch * 1000)
    return {
        "snapshots_per_partition": snapshots,
        "warmup_epochs": warmup,
        "batches_per_partition_between_snapshots": batches,
        "batch": batch,
        "partition_snapshot_ms": {
            "p50": _pct(per_partition, 50),
            "p99": _pct(per_partition, 99),
            "max": max(per_partition),
        },
        "epoch_snapshot_ms": {
            "p50": _pct(per_epoch, 50),
            "p99": _pct(per_epoch, 99),
            "max": max(per_epoch),
        },
        "write_us_per_event": write_s / max(written, 1) * 1e6,
        "records_written": written,
    }


def events_for(members: np.ndarray, partition: int, first_offset: int, n: int) -> list[Event]:
    """`n` events of existing users of one partition, at offsets from `first_offset`."""
    rng = np.random.default_rng(first_offset + partition)
    users = rng.choice(members, n).tolist()
    amounts = rng.lognormal(3.5, 1.0, n).tolist()
    now = time.time_ns()
    return [
        Event(
            Transaction(
                transaction_id=f"t-{partition}-{first_offset + i}",
                user_id=user_id(int(u)),
                amount=round(float(a), 2),
                currency="USD",
                timestamp=T0 + 2 * 86400.0 + i,
                merchant=f"m{i % 5000:06d}",
            ),
            partition,
            first_offset + i,
            now,
        )
        for i, (u, a) in enumerate(zip(users, amounts, strict=True))
    ]


def measure_resume(
    config: PartitionConfig, partitions: int, members: list[np.ndarray], batch: int
) -> dict[str, Any]:
    """Open every partition as a resume does; time each one's first and a later batch."""
    logics, open_s = resumed_logics(config, partitions)
    first: list[float] = []
    later: list[float] = []
    try:
        for logic in logics:
            scorer = logic._scorer
            assert scorer is not None
            p = scorer.partition
            evs = events_for(members[p], p, scorer.high_water, batch * 6)
            for k in range(6):
                t = time.perf_counter()
                logic.on_batch(
                    [PartitionBatch(p, [EventBatch.from_events(evs[k * batch : (k + 1) * batch])])]
                )
                took = (time.perf_counter() - t) * 1000
                (first if k == 0 else later).append(took)
    finally:
        for logic in logics:
            if logic._scorer is not None:
                logic._scorer.store.close()
    return {
        "open_all_partitions_ms": open_s * 1000,
        "first_batch_ms": {"per_partition": first, "max": max(first)},
        "later_batch_ms_p50": _pct(later, 50),
        "first_batches_total_ms": sum(first),
    }


def run_job(users: int, events: int, partitions: int, workdir: Path) -> dict[str, Any]:
    """The real job with recovery on, `users` users, `events` events: its directories' sizes."""
    state, recovery = workdir / "state", workdir / "recovery"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "FRAUD_USERS": str(users),
        "FRAUD_EVENTS": str(events),
        "FRAUD_PARTITIONS": str(partitions),
        "FRAUD_STATE_DIR": str(state),
        "FRAUD_RECOVERY_DIR": str(recovery),
        "FRAUD_OUTPUT_DIR": str(workdir / "out"),
        "FRAUD_STATUS_INTERVAL": "0",
    }
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "bytewax_fraud"],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    took = time.perf_counter() - t
    if proc.returncode != 0:
        raise FraudError(f"the job failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    keys = 0
    for p in range(partitions):
        s = RocksStore(partition_dir(state, p))
        try:
            keys += s.estimate_keys()
        finally:
            s.close()
    return {
        "events": events,
        "users": users,
        "seconds": took,
        "events_per_s": events / took,
        "state_bytes": du(state),
        "recovery_bytes": du(recovery),
        "estimated_keys": keys,
    }


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB"


def format_report(r: dict[str, Any]) -> str:
    s, res, b = r["snapshot"], r["resume"], r["build"]
    ps, es = s["partition_snapshot_ms"], s["epoch_snapshot_ms"]
    rows = [
        ("users of state", f"{r['users']:,} in {r['partitions']} partitions"),
        ("record size", f"{b['record_bytes']} B"),
        ("build (WriteBatches of 10k)", f"{b['seconds']:.1f} s"),
        ("state on disk after build", _mb(r["state_bytes_built"])),
        ("state on disk after the stream", _mb(r["state_bytes_after"])),
        (
            "stream between snapshots",
            f"{s['batches_per_partition_between_snapshots']} x ({s['batch']} records +"
            f" {s['batch']} outbox lines) per partition;"
            f" write {s['write_us_per_event']:.2f} µs per event (record + outbox line)",
        ),
        (
            "snapshot, one partition",
            f"p50 {ps['p50']:.2f} ms, p99 {ps['p99']:.2f} ms, max {ps['max']:.2f} ms"
            f" ({s['snapshots_per_partition']} x {r['partitions']})",
        ),
        (
            "snapshot, one epoch (all partitions)",
            f"p50 {es['p50']:.2f} ms, p99 {es['p99']:.2f} ms, max {es['max']:.2f} ms",
        ),
        ("resume: open all partitions", f"{res['open_all_partitions_ms']:.1f} ms"),
        (
            "resume: first batch per partition",
            ", ".join(f"{x:.1f}" for x in res["first_batch_ms"]["per_partition"])
            + f" ms (later batches p50 {res['later_batch_ms_p50']:.1f} ms)",
        ),
    ]
    job = r.get("job")
    if job:
        rows += [
            (
                "real job, recovery on",
                f"{job['events']:,} events, {job['users']:,} users in {job['seconds']:.1f} s"
                f" ({job['events_per_s']:,.0f} ev/s); ~{job['estimated_keys']:,} keys",
            ),
            ("  state dir", _mb(job["state_bytes"])),
            ("  recovery dir", _mb(job["recovery_bytes"])),
        ]
    else:
        rows.append(("recovery dir", "not measured (pass --job-events N)"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bytewax_fraud.tools.snapshot_cost",
        description="Measure the snapshot cost (WAL sync, outbox pruning, key estimate) and the"
        " resume cost with a large partitioned RocksDB state.",
    )
    p.add_argument("--users", type=int, default=1_000_000, help="user records in the state")
    p.add_argument("--partitions", type=int, default=4, help="state partitions")
    p.add_argument("--window", type=int, default=10, help="amounts kept per user")
    p.add_argument("--snapshots", type=int, default=50, help="measured snapshots per partition")
    p.add_argument(
        "--batches",
        type=int,
        default=16,
        help="score-like batches per partition between snapshots (16 x 1024 x 4 partitions"
        " = 65k events per epoch, about one second of the job)",
    )
    p.add_argument("--batch", type=int, default=1024, help="records (and outbox entries) a batch")
    p.add_argument(
        "--kept-marks",
        type=int,
        default=9,
        help="snapshot marks kept before the outbox is pruned (the job: 3 + backup/snapshot"
        " interval = 9 with the defaults)",
    )
    p.add_argument(
        "--job-events",
        type=int,
        default=0,
        help="also run the real job with recovery for this many events and --users users",
    )
    p.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: a temp dir, removed)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    return p.parse_args(argv)


def measure(args: argparse.Namespace, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Every figure of the report (see the module docstring)."""
    model = ModelLoader(warmup_batch=args.batch).load(DEFAULT_MODEL)
    state_dir = workdir / "state"
    log(f"building {args.users:,} user records in {state_dir} ...")
    build = build_state(state_dir, args.users, args.partitions, args.window, model, args.seed)
    built = du(state_dir)
    members = users_by_partition(args.users, args.partitions)
    config = partition_config(state_dir, model, args.window, args.kept_marks)
    logics, _ = resumed_logics(config, args.partitions)
    log(f"{args.kept_marks + args.snapshots} snapshots per partition under a write stream ...")
    try:
        snap = measure_snapshots(
            logics,
            members,
            model,
            args.window,
            args.snapshots,
            args.kept_marks,
            args.batches,
            args.batch,
            args.seed,
        )
    finally:
        for logic in logics:
            if logic._scorer is not None:
                logic._scorer.store.close()
    after = du(state_dir)
    log("resume: open and first batch ...")
    resume = measure_resume(config, args.partitions, members, args.batch)
    report: dict[str, Any] = {
        "users": args.users,
        "partitions": args.partitions,
        "window": args.window,
        "model": model.label,
        "build": build,
        "state_bytes_built": built,
        "state_bytes_after": after,
        "snapshot": snap,
        "resume": resume,
        "page_cache": "warm (the state was just written; a cold resume reads more from disk)",
    }
    if args.job_events:
        log(f"real job: {args.job_events:,} events, {args.users:,} users, recovery on ...")
        report["job"] = run_job(args.users, args.job_events, args.partitions, workdir / "job")
    return report


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bytewax_fraud.tools.snapshot_cost`."""
    args = parse_args(argv)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="snapshot-cost-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        report = measure(args, workdir, log=lambda m: print(m, file=sys.stderr))
    except FraudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.dir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
