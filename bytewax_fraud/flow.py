"""Assemble the dataflow: source -> parse -> key by partition -> score -> sinks."""

from __future__ import annotations

import atexit
import functools
import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig

from bytewax_fraud.connectors import make_source, output_dead_letters, output_predictions
from bytewax_fraud.errors import StateError
from bytewax_fraud.events import DeadLetter
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.model.runtime import load_model
from bytewax_fraud.operator import PartitionConfig, logic_builder
from bytewax_fraud.parse import Event, parse_message
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.recovery import prepare_recovery
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.manifest import NAME, ensure_manifest, run_id
from bytewax_fraud.status import STATS, format_summary, start_reporter


@dataclass(frozen=True)
class Job:
    """A dataflow and how to run it."""

    flow: Dataflow
    recovery: RecoveryConfig | None
    epoch_interval: timedelta


def _is_event(x: Event | DeadLetter) -> TypeGuard[Event]:
    return isinstance(x, Event)


def _route(ev: Event) -> str:
    return routing_key(ev.partition)


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
        kept_marks=3 + math.ceil(s.backup_interval / s.snapshot_interval),
        kill_at_snapshot=s.fault_kill_at_snapshot,
    )
    flow = Dataflow("fraud")
    raw = op.input("transactions", flow, source or make_source(s))
    parsed = op.map(
        "parse", raw, functools.partial(parse_message, max_message_bytes=s.max_message_bytes)
    )
    split = op.branch("split_valid", parsed, _is_event)
    keyed = op.key_on("by_partition", split.trues, _route)
    scored = op.stateful_batch("score", keyed, logic_builder(config))
    output_predictions(scored, s, fresh, predictions)
    dead: Stream[Any] = split.falses  # the complement of _is_event: DeadLetter
    output_dead_letters(dead, s, fresh, dead_letters)
    start_reporter(s.status_interval)
    _register_summary(s.summary_file)
    epoch = timedelta(seconds=s.snapshot_interval if recovery else 10.0)
    return Job(flow, recovery, epoch)


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
