"""Wire the dataflow: source -> parse -> key by partition -> score -> sinks.

Only wiring: building a dataflow opens nothing and starts nothing. What the
steps need (the scorer's config, the command validator, the source and the
sinks) is prepared by `job.build_job`.
"""

from __future__ import annotations

import functools
from typing import Any, TypeGuard, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source

from bytewax_fraud.admission.misrouting import reject_misrouted
from bytewax_fraud.connectors import Outputs
from bytewax_fraud.connectors.epochs import EpochSignal
from bytewax_fraud.control.commands import ControlItem, ControlMessage, ControlRejected
from bytewax_fraud.control.deployment import report_rejection
from bytewax_fraud.control.gate import CommandValidator
from bytewax_fraud.label_field import relabel
from bytewax_fraud.parse import parse_batch
from bytewax_fraud.partition_logic import PartitionBatch, PartitionConfig, logic_builder
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.process.progress import Progress
from bytewax_fraud.records import (
    DeadLetter,
    EventBatch,
    RawBatch,
    RawMessage,
    ScoredBatch,
    dead_letter_json,
)
from bytewax_fraud.status import STATS


def _ingest_batch(
    validator: CommandValidator,
    max_bytes: int,
    partitions: int,
    label_field: str,
    items: list[RawBatch | RawMessage | ControlMessage],
) -> list[PartitionBatch | DeadLetter]:
    """Parse source batches into one batch per state partition (in order) and dead letters.

    Working on whole batches, as columns, keeps per-event objects off the hot path.
    Single `RawMessage`s (from a custom source) are parsed as batches of one. Events
    of users that belong to another partition are dead letters (misrouting.py).
    Labels come from `label_field` where it is not `label` (label_field.py).
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
                if label_field != "label":
                    events = relabel(events, label_field)
                by_partition.setdefault(raw.partition, []).append(events)
        else:
            msg = cast(ControlMessage, item)
            outcome = validator.validate(msg)
            if isinstance(outcome, ControlRejected):
                dead += report_rejection(msg.partition, msg.seq, msg.value, outcome, msg.source)
            else:
                by_partition.setdefault(outcome.partition, []).append(outcome)
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


def _count_dead_letter(_step_id: str, dead: DeadLetter) -> None:
    STATS.record_dead_letters([dead.error_class])


def _dead_letter_route(dead: DeadLetter) -> str:
    return routing_key(dead.origin.partition)


def _prediction_blob(item: tuple[str, ScoredBatch]) -> tuple[str, bytes]:
    return ("predictions", b"\n".join(item[1].lines) + b"\n")


def _dead_letter_line(dead: DeadLetter) -> tuple[str, bytes]:
    return ("dead_letters", dead_letter_json(dead) + b"\n")


def build_flow(
    source: Source[Any],
    outputs: Outputs,
    config: PartitionConfig,
    validator: CommandValidator,
    max_message_bytes: int,
    partitions: int,
    progress: Progress | None = None,
    label_field: str = "label",
) -> Dataflow:
    """The fraud-scoring dataflow over this source and these sinks.

    Args:
        source: Raw batches (or messages) and control messages, per partition.
        outputs: Where predictions and dead letters go.
        config: What every partition's scorer shares (model, state, TTL, ...).
        validator: Checks control commands once per process.
        max_message_bytes: Larger messages are dead letters (FRAUD_MAX_MESSAGE_BYTES).
        partitions: The number of state partitions; an event of a user hashed to
            another partition than the one it arrived on is a dead letter.
        progress: Told when each input partition completes an epoch (the stall
            watchdog's signal); only a `FixedPartitionedSource` can report it.
        label_field: The field events carry their 0/1 label in (FRAUD_LABEL_FIELD).
    """
    if progress is not None and isinstance(source, FixedPartitionedSource):
        source = EpochSignal(source, progress)
    flow = Dataflow("fraud")
    raw = op.input("transactions", flow, source)
    parsed = op.flat_map_batch(
        "parse",
        raw,
        functools.partial(_ingest_batch, validator, max_message_bytes, partitions, label_field),
    )
    split = op.branch("split_valid", parsed, _is_partition_batch)
    keyed = op.key_on("by_partition", split.trues, _route)
    scored = op.stateful_batch("score", keyed, logic_builder(config))
    results = op.branch("split_results", scored, _is_scored)
    rejected = op.map("unkey_rejected", results.falses, _value)
    dead: Stream[Any] = op.merge("all_dead_letters", split.falses, rejected)
    op.inspect("count_dead_letters", dead, _count_dead_letter)
    predictions: Stream[Any] = results.trues
    if outputs.exactly_once is not None:
        # One transaction per state partition holds both outputs: dead letters are keyed
        # by the partition they came from, as predictions are.
        keyed_dead = op.key_on("key_dead_letters", dead, _dead_letter_route)
        both = op.merge("all_outputs", predictions, keyed_dead)
        op.output("outputs_exactly_once", both, outputs.exactly_once)
        return flow
    if outputs.as_lines:
        predictions = op.map("format_predictions", predictions, _prediction_blob)
        dead = op.map("format_dead_letters", dead, _dead_letter_line)
    op.output("predictions_out", predictions, outputs.predictions)
    op.output("dead_letters_out", dead, outputs.dead_letters)
    return flow
