"""Assemble the dataflow: source -> parse -> key by partition -> score -> sinks."""

from __future__ import annotations

import atexit
import functools
import json
import sys
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from bytewax_fraud.connectors import make_source, output_dead_letters, output_predictions
from bytewax_fraud.features import N_FEATURES
from bytewax_fraud.model.runtime import load_model
from bytewax_fraud.operator import PartitionConfig, logic_builder
from bytewax_fraud.parse import Event, parse_message
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.status import STATS, format_summary, start_reporter


def build_dataflow(
    settings: Settings | None = None,
    *,
    source: Source[Any] | None = None,
    predictions: Sink[Any] | None = None,
    dead_letters: Sink[Any] | None = None,
    in_memory_state: bool = False,
) -> Dataflow:
    """The fraud-scoring dataflow for these settings.

    Everything that can be checked before the first event is checked here, so a
    bad setting, model or state directory fails at start: the contract and device
    of the model, and the state directory's partition count and window.
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
    fresh = in_memory_state or ensure_manifest(s.state_dir, s.partitions, s.window)
    STATS.model = model.label
    config = PartitionConfig(
        state_dir=None if in_memory_state else s.state_dir,
        model=model,
        window=s.window,
        ttl_seconds=s.state_ttl,
        batch_max=s.batch_max,
        sweep_interval=s.sweep_interval,
        sweep_chunk=s.sweep_chunk,
    )
    flow = Dataflow("fraud")
    raw = op.input("transactions", flow, source or make_source(s))
    parsed = op.map(
        "parse", raw, functools.partial(parse_message, max_message_bytes=s.max_message_bytes)
    )
    split = op.branch("split_valid", parsed, lambda x: isinstance(x, Event))
    keyed = op.key_on("by_partition", split.trues, lambda ev: routing_key(ev.partition))
    scored = op.stateful_batch("score", keyed, logic_builder(config))
    output_predictions(scored, s, fresh, predictions)
    output_dead_letters(split.falses, s, fresh, dead_letters)
    start_reporter(s.status_interval)
    _register_summary(s.summary_file)
    return flow


@functools.cache
def _register_summary(path: Path | None) -> None:
    def report() -> None:
        summary = STATS.summary()
        print(format_summary(summary), file=sys.stderr, flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=2) + "\n")

    atexit.register(report)
