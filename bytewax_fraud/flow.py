"""Wire the dataflow: source -> parse -> key by partition -> score -> sinks.

Only wiring: building a dataflow opens nothing and starts nothing. What the
steps need (the scorer's config, the command validator, the source and the
sinks) is prepared by `job.build_job`.

Everything a partition outputs (predictions, and the dead letters of its events
and commands) leaves its scoring step in one item per call, in input order.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import FixedPartitionedSource, Source

from bytewax_fraud.admission.misrouting import reject_misrouted
from bytewax_fraud.connectors import Outputs
from bytewax_fraud.connectors.epochs import EpochSignal
from bytewax_fraud.control.commands import ControlMessage, ControlRejected
from bytewax_fraud.control.deployment import report_rejection
from bytewax_fraud.control.gate import CommandValidator
from bytewax_fraud.label_field import relabel
from bytewax_fraud.parse import parse_batch
from bytewax_fraud.partition_logic import (
    PartitionBatch,
    PartitionConfig,
    PartitionItem,
    logic_builder,
)
from bytewax_fraud.partitioning import routing_key
from bytewax_fraud.process.progress import Progress
from bytewax_fraud.records import (
    DeadLetter,
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
) -> list[PartitionBatch]:
    """Parse source batches into one batch per state partition, in stream order.

    Working on whole batches, as columns, keeps per-event objects off the hot path.
    Single `RawMessage`s (from a custom source) are parsed as batches of one. Events
    of users that belong to another partition are dead letters (misrouting.py).
    Labels come from `label_field` where it is not `label` (label_field.py).

    Dead letters (malformed messages, misrouted events, rejected commands) go to
    their partition's scoring step with its events, which hands each partition's
    outputs on in one item per call: every output of a partition takes one path,
    in input order, so an exactly-once sink may commit between any two items.
    """
    by_partition: dict[int, list[PartitionItem]] = {}
    for item in items:
        kind = type(item)
        if kind is RawBatch or kind is RawMessage:
            raw = (
                cast(RawBatch, item) if kind is RawBatch else RawBatch.of([cast(RawMessage, item)])
            )
            events, rejected = parse_batch(raw, max_bytes)
            out = by_partition.setdefault(raw.partition, [])
            out += rejected
            if events is not None:
                events, misrouted = reject_misrouted(events, partitions)
                out += misrouted
            if events is not None:
                if label_field != "label":
                    events = relabel(events, label_field)
                out.append(events)
        else:
            msg = cast(ControlMessage, item)
            outcome = validator.validate(msg)
            out = by_partition.setdefault(msg.partition, [])
            if isinstance(outcome, ControlRejected):
                out += report_rejection(msg.partition, msg.seq, msg.value, outcome, msg.source)
            else:
                out.append(outcome)
    return [PartitionBatch(p, xs) for p, xs in by_partition.items() if xs]


def _route(batch: PartitionBatch) -> str:
    return routing_key(batch.partition)


def _has_lines(item: tuple[str, ScoredBatch]) -> bool:
    return bool(item[1].lines)


def _dead_letters_of(item: tuple[str, ScoredBatch]) -> list[DeadLetter]:
    return item[1].dead_letters


def _count_dead_letters(_step_id: str, item: tuple[str, ScoredBatch]) -> None:
    if item[1].dead_letters:
        STATS.record_dead_letters([d.error_class for d in item[1].dead_letters])


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
    keyed = op.key_on("by_partition", parsed, _route)
    scored = op.stateful_batch("score", keyed, logic_builder(config))
    # One item per scoring call: the partition's predictions and dead letters together.
    op.inspect("count_dead_letters", scored, _count_dead_letters)
    if outputs.exactly_once is not None:
        # One transaction per state partition holds both outputs, item by item.
        op.output("outputs_exactly_once", scored, outputs.exactly_once)
        return flow
    predictions: Stream[Any] = op.filter("with_predictions", scored, _has_lines)
    dead: Stream[Any] = op.flat_map("dead_letters", scored, _dead_letters_of)
    if outputs.as_lines:
        predictions = op.map("format_predictions", predictions, _prediction_blob)
        dead = op.map("format_dead_letters", dead, _dead_letter_line)
    op.output("predictions_out", predictions, outputs.predictions)
    op.output("dead_letters_out", dead, outputs.dead_letters)
    return flow
