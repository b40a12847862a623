"""Assemble the dataflow: source -> parse -> key by partition -> score -> sinks."""

from __future__ import annotations

import atexit
import functools
import gc
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig

from bytewax_fraud.columns import EventBatch
from bytewax_fraud.connectors import make_source, output_dead_letters, output_predictions
from bytewax_fraud.control.commands import ControlItem, ControlMessage, ControlRejected
from bytewax_fraud.control.deployment import control_dead_letter
from bytewax_fraud.control.gate import CommandValidator, ModelGate
from bytewax_fraud.errors import RecoveryError, StateError
from bytewax_fraud.event_time import TimePolicy
from bytewax_fraud.events import DeadLetter
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.misrouting import reject_misrouted
from bytewax_fraud.model.runtime import LoadedModel, load_model, load_model_bytes
from bytewax_fraud.operator import PartitionBatch, PartitionConfig, logic_builder
from bytewax_fraud.parse import RawBatch, RawMessage, parse_batch
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.recovery import prepare_recovery
from bytewax_fraud.scoring import ScoredBatch
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.manifest import NAME, ensure_manifest, run_id
from bytewax_fraud.status import STATS, format_summary, start_reporter
from bytewax_fraud.telemetry import start_exporter


@dataclass(frozen=True)
class Job:
    """A dataflow and how to run it."""

    flow: Dataflow
    recovery: RecoveryConfig | None
    epoch_interval: timedelta


def _control(validator: CommandValidator, item: ControlMessage) -> ControlItem | DeadLetter | None:
    """Validate a control message; a rejection is reported once, by partition 0's copy."""
    outcome = validator.validate(item)
    if not isinstance(outcome, ControlRejected):
        return outcome
    if item.partition != 0:
        return None
    return control_dead_letter(item.seq, item.value, outcome, item.source)


def _ingest_batch(
    validator: CommandValidator,
    max_bytes: int,
    partitions: int,
    items: list[RawBatch | RawMessage | ControlMessage],
) -> list[PartitionBatch | DeadLetter]:
    """Parse source batches into one batch per state partition (in order) and dead letters.

    Working on whole batches, as columns, keeps per-event objects off the hot path.
    Single `RawMessage`s (from a custom source) are parsed as batches of one. Events
    of users that belong to another partition are dead letters (misrouting.py).
    """
    by_partition: dict[int, list[EventBatch | ControlItem]] = {}
    dead: list[PartitionBatch | DeadLetter] = []
    for item in items:
        kind = type(item)
        if kind is RawBatch or kind is RawMessage:
            raw = (
                cast(RawBatch, item) if kind is RawBatch else RawBatch.of([cast(RawMessage, item)])
            )
            events, rejected = parse_batch(raw, max_bytes)
            dead += rejected
            if events is not None:
                events, misrouted = reject_misrouted(events, partitions)
                dead += misrouted
            if events is not None:
                by_partition.setdefault(raw.partition, []).append(events)
        else:
            control = _control(validator, cast(ControlMessage, item))
            if isinstance(control, DeadLetter):
                dead.append(control)
            elif control is not None:
                by_partition.setdefault(control.partition, []).append(control)
    return [PartitionBatch(p, xs) for p, xs in by_partition.items()] + dead


def _is_partition_batch(x: PartitionBatch | DeadLetter) -> TypeGuard[PartitionBatch]:
    return isinstance(x, PartitionBatch)


def _route(batch: PartitionBatch) -> str:
    return routing_key(batch.partition)


def _value(kv: tuple[str, Any]) -> Any:
    return kv[1]


def _is_scored(
    kv: tuple[str, ScoredBatch | DeadLetter],
) -> TypeGuard[tuple[str, ScoredBatch]]:
    return isinstance(kv[1], ScoredBatch)


def _restorer(s: Settings) -> Callable[[dict[str, str]], LoadedModel]:
    """Loads a model named in a persisted deployment, refusing a changed or missing file."""

    def restore(ref: dict[str, str]) -> LoadedModel:
        path = Path(ref["path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RecoveryError(
                f"model {ref['model_id']} ({path}) served before the restart but cannot be read"
                f" ({exc}): put the file back, or delete the state to start fresh"
            ) from exc
        if hashlib.sha256(data).hexdigest() != ref["sha256"]:
            raise RecoveryError(
                f"model {ref['model_id']} at {path} changed since it was deployed (sha256 differs):"
                " put back the deployed file; model files must not be changed in place"
            )
        return load_model_bytes(
            data,
            model_id=ref["model_id"],
            device=s.device,
            threads=s.ort_threads,
            expected_features=N_FEATURES,
            warmup_batch=s.batch_max,
            source=str(path),
        )

    return restore


def build_job(
    settings: Settings | None = None,
    *,
    source: Source[Any] | None = None,
    predictions: Sink[Any] | None = None,
    dead_letters: Sink[Any] | None = None,
    in_memory_state: bool = False,
    process_id: int | None = None,
) -> Job:
    """The fraud-scoring job for these settings.

    Everything that can be checked before the first event is checked here, so a
    bad setting, model, state or recovery directory fails at start: the model's
    contract and device, the state's partition count and window, and whether the
    recovery directory belongs to the state. In a cluster, process 0 creates the
    state and recovery directories and the others wait for them.
    """
    s = settings or load_settings()
    model = load_model(
        s.model,
        model_id=s.model_name,
        device=s.device,
        threads=s.ort_threads,
        expected_features=N_FEATURES,
        warmup_batch=s.batch_max,
    )
    recovery = None
    fresh = True
    if not in_memory_state:
        if process_id:
            _wait_for(s.state_dir / NAME)
        fresh = ensure_manifest(s.state_dir, s.partitions, s.window)
        if not process_id:
            recovery = prepare_recovery(
                s.recovery_dir,
                s.state_dir,
                run_id(s.state_dir),
                fresh,
                s.partitions,
                s.backup_interval,
            )
        elif s.recovery_dir is not None:
            recovery = RecoveryConfig(str(s.recovery_dir), timedelta(seconds=s.backup_interval))
    STATS.model = model.label
    config = PartitionConfig(
        state_dir=None if in_memory_state else s.state_dir,
        model=model,
        window=s.window,
        ttl_seconds=s.state_ttl,
        batch_max=s.batch_max,
        sweep_interval=s.sweep_interval,
        sweep_chunk=s.sweep_chunk,
        restore_model=_restorer(s),
        kept_marks=3 + math.ceil(s.backup_interval / s.snapshot_interval),
        kill_at_snapshot=s.fault_kill_at_snapshot,
        buffer_bytes=int(s.state_buffer_mb * 1024 * 1024),
        time_policy=TimePolicy(s.max_future_skew, s.allowed_lateness),
    )
    validator = CommandValidator(
        ModelGate(s.model_dir, s.device, s.ort_threads, warmup_batch=s.batch_max)
    )
    flow = Dataflow("fraud")
    raw = op.input("transactions", flow, source or make_source(s))
    parsed = op.flat_map_batch(
        "parse",
        raw,
        functools.partial(_ingest_batch, validator, s.max_message_bytes, s.partitions),
    )
    split = op.branch("split_valid", parsed, _is_partition_batch)
    keyed = op.key_on("by_partition", split.trues, _route)
    scored = op.stateful_batch("score", keyed, logic_builder(config))
    results = op.branch("split_results", scored, _is_scored)
    output_predictions(results.trues, s, fresh, predictions)
    rejected = op.map("unkey_rejected", results.falses, _value)
    dead: Stream[Any] = op.merge("all_dead_letters", split.falses, rejected)
    output_dead_letters(dead, s, fresh, dead_letters)
    start_reporter(s.status_interval)
    start_exporter(s.metrics_port)
    _register_summary(s.summary_file)
    _tune_gc(s.gc_threshold)
    epoch = timedelta(seconds=s.snapshot_interval if recovery else 10.0)
    return Job(flow, recovery, epoch)


def _tune_gc(threshold: int) -> None:
    """Make Python's cyclic GC rarer and cheaper for the hot path.

    The hot path allocates many short-lived objects (a pydantic model per event). With
    Python's default thresholds a 150k-event run did 967 young, 88 middle and 8 full
    collections; the full ones walk every object built at start (modules, ONNX
    sessions) and took 328 ms in all, up to 48 ms each: latency spikes. With this, the
    same run did no collection at all. `gc.freeze()` moves the start-up objects out of
    the collector's way; short-lived objects are freed by reference counting anyway.
    """
    if threshold <= 0:
        return
    gc.freeze()
    gc.set_threshold(threshold, 50, 1000)


def build_dataflow(settings: Settings | None = None, **kwargs: Any) -> Dataflow:
    """Only the dataflow of `build_job` (for `python -m bytewax.run` and tests)."""
    return build_job(settings, **kwargs).flow


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise StateError(
                f"{path} did not appear within {timeout:.0f} s: process 0 creates the state"
                " directory; start it first, or give every process the same FRAUD_STATE_DIR"
            )
        time.sleep(0.2)


@functools.cache
def _register_summary(path: Path | None) -> None:
    def report() -> None:
        summary = STATS.summary()
        print(format_summary(summary), file=sys.stderr, flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")

    atexit.register(report)
