"""Prepare a run and build its dataflow: everything that can fail is checked before the first event.

`build_job` loads the model, checks (or creates) the state and recovery
directories, chooses the source and sinks, and wires the dataflow
(`flow.build_flow`). It starts no thread or server: the process-level services
(status line, metrics endpoint, summary, GC tuning) are started by the entry
points through `services.start_services`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig

from bytewax_fraud.admission.event_time import TimePolicy
from bytewax_fraud.connectors import Outputs, input_kind_of, make_outputs, make_source
from bytewax_fraud.connectors.input_kind import check_input_kind
from bytewax_fraud.control.gate import CommandValidator, ModelGate
from bytewax_fraud.errors import ModelChangedError, RecoveryError, StateError
from bytewax_fraud.flow import build_flow
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.partition_logic import PartitionConfig
from bytewax_fraud.process.progress import Progress
from bytewax_fraud.recovery import prepare_recovery
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.manifest import NAME, ensure_manifest, run_id
from bytewax_fraud.status import STATS


@dataclass(frozen=True)
class Job:
    """A dataflow and how to run it."""

    flow: Dataflow
    recovery: RecoveryConfig | None
    epoch_interval: timedelta
    #: Epochs this process's input partitions complete (the stall watchdog watches it).
    progress: Progress


def _restorer(loader: ModelLoader) -> Callable[[dict[str, str]], LoadedModel]:
    """Loads a model named in a persisted deployment, refusing a changed or missing file."""

    def restore(ref: dict[str, str]) -> LoadedModel:
        path = Path(ref["path"])
        try:
            return loader.load(path, model_id=ref["model_id"], sha256=ref["sha256"])
        except OSError as exc:
            raise RecoveryError(
                f"model {ref['model_id']} ({path}) served before the restart but cannot be read"
                f" ({exc}): put the file back, or delete the state to start fresh"
            ) from exc
        except ModelChangedError as exc:
            raise RecoveryError(
                f"model {ref['model_id']} at {path} changed since it was deployed (sha256 differs):"
                " put back the deployed file; model files must not be changed in place"
            ) from exc

    return restore


def build_job(
    settings: Settings | None = None,
    *,
    source: Source[Any] | None = None,
    outputs: Outputs | None = None,
    in_memory_state: bool = False,
    process_id: int | None = None,
) -> Job:
    """The fraud-scoring job for these settings.

    Everything that can be checked before the first event is checked here, so a
    bad setting, model, state or recovery directory fails at start: the model's
    contract and device, the state's partition count and window, and whether the
    recovery directory belongs to the state. In a cluster, process 0 creates the
    state and recovery directories and the others wait for them.

    Args:
        settings: The run's settings (default: from the environment).
        source: Replaces the configured source (tests).
        outputs: Replace the configured sinks (tests, custom runners).
        in_memory_state: Keep user state in memory, with no recovery (tests, baselines).
        process_id: This process's id in a cluster (None or 0: the first).
    """
    s = settings or load_settings()
    loader = ModelLoader(s.device, s.ort_threads, s.batch_max)
    model = loader.load(s.model, model_id=s.model_name)
    recovery = None
    fresh = True
    if not in_memory_state:
        if process_id:
            _wait_for(s.state_dir / NAME)
        fresh = ensure_manifest(s.state_dir, s.partitions, s.window)
        check_input_kind(s.state_dir, input_kind_of(s))
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
        restore_model=_restorer(loader),
        kept_marks=3 + math.ceil(s.backup_interval / s.snapshot_interval),
        buffer_bytes=int(s.state_buffer_mb * 1024 * 1024),
        cache_bytes=int(s.state_cache_mb * 1024 * 1024),
        time_policy=TimePolicy(s.max_future_skew, s.allowed_lateness),
        stats=STATS,
    )
    progress = Progress()
    flow = build_flow(
        source or make_source(s),
        outputs or make_outputs(s, fresh),
        config,
        CommandValidator(ModelGate(s.model_dir, loader)),
        s.max_message_bytes,
        s.partitions,
        progress=progress,
        label_field=s.label_field,
    )
    # Exactly-once output commits at each epoch's end, so its epochs keep the snapshot cadence.
    eos = s.kafka_bootstrap_servers and s.kafka_delivery == "exactly-once"
    epoch = timedelta(seconds=s.snapshot_interval if recovery or eos else 10.0)
    return Job(flow, recovery, epoch, progress)


def build_dataflow(settings: Settings | None = None, **kwargs: Any) -> Dataflow:
    """Only the dataflow of `build_job` (for tests and custom runners)."""
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
