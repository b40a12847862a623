"""Which source and sinks a run uses, chosen from the settings.

The embedded default reads the built-in generator and writes JSON Lines files
(or stdout). With `KAFKA_BOOTSTRAP_SERVERS` set, the input topic is read and
both outputs go to Kafka topics (see `bytewax_fraud.kafka`). Each `output_*`
function attaches its own formatting step, because files take blobs of lines
while a message broker takes one message per item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.outputs import Sink

from bytewax_fraud import kafka
from bytewax_fraud.control.commands import ControlMessage
from bytewax_fraud.control.reader import (
    ControlReader,
    WithControl,
    file_reader,
    kafka_reader,
    null_reader,
)
from bytewax_fraud.events import DeadLetter
from bytewax_fraud.fault_inputs import FaultPlan
from bytewax_fraud.kafka.admin import admin_client, partition_count
from bytewax_fraud.kafka.config import admin_config, consumer_config
from bytewax_fraud.parse import RawBatch, dead_letter_json
from bytewax_fraud.scoring import ScoredBatch
from bytewax_fraud.settings import Settings
from bytewax_fraud.sinks import JsonLinesSink, StdoutSink
from bytewax_fraud.source import GeneratorSource
from bytewax_fraud.status import STATS

log = logging.getLogger(__name__)


def make_source(s: Settings) -> Source[RawBatch | ControlMessage]:
    """The input of this run, each partition merged with the control input.

    For Kafka the topics are checked first, so a missing topic or a wrong
    partition count fails at start.
    """
    inner: FixedPartitionedSource[RawBatch, Any]
    if s.kafka_bootstrap_servers:
        inner = kafka.kafka_source(s)
    else:
        inner = GeneratorSource(
            users=s.users,
            seed=s.seed,
            partitions=s.partitions,
            events=s.events,
            rate=s.rate,
            batch_max=s.batch_max,
            batch_timeout_s=s.batch_timeout_ms / 1000.0,
            faults=(
                FaultPlan(s.fault_inputs_every, s.fault_inputs_twin)
                if s.fault_inputs_every
                else None
            ),
        )
    return WithControl(inner, control_reader(s), _control_name(s), s.control_poll_interval)


def _control_name(s: Settings) -> str:
    """Where control commands come from, as dead letters of rejected ones name it."""
    if s.control_file is not None:
        return str(s.control_file)
    return s.topic_control if s.kafka_bootstrap_servers else "none"


def control_reader(s: Settings) -> Callable[[dict[str, Any] | None], ControlReader]:
    """The control input: FRAUD_CONTROL_FILE if set, else the Kafka control topic if it exists."""
    if s.control_file is not None:
        return file_reader(s.control_file)
    if s.kafka_bootstrap_servers:
        admin = admin_client(admin_config(s))
        if partition_count(admin, s.topic_control) is None:
            log.warning(
                "control topic %r does not exist: no model control (create it with 1 partition)",
                s.topic_control,
            )
            return null_reader
        return kafka_reader(consumer_config(s), s.topic_control)
    return null_reader


def _prediction_blob(item: tuple[str, ScoredBatch]) -> tuple[str, bytes]:
    return ("predictions", b"\n".join(item[1].lines) + b"\n")


def _dead_letter_line(dead: DeadLetter) -> tuple[str, bytes]:
    STATS.record_dead_letters([dead.error_class])
    return ("dead_letters", dead_letter_json(dead) + b"\n")


def output_predictions(
    scored: Stream[tuple[str, ScoredBatch]],
    s: Settings,
    fresh: bool,
    sink: Sink[Any] | None = None,
) -> None:
    """Write every scored batch's prediction lines."""
    if sink is None and s.kafka_bootstrap_servers:
        # One message per prediction, keyed by user id (the sink splits the batches).
        op.output("predictions_out", scored, kafka.prediction_sink(s))
        return
    if sink is None:
        if s.outputs == "stdout":
            sink = StdoutSink()
        else:
            sink = JsonLinesSink(s.output_dir / "predictions.jsonl", fresh)
    op.output("predictions_out", op.map("format_predictions", scored, _prediction_blob), sink)


def output_dead_letters(
    dead: Stream[DeadLetter],
    s: Settings,
    fresh: bool,
    sink: Sink[Any] | None = None,
) -> None:
    """Write every dead letter, counting them by error class."""
    if sink is None and s.kafka_bootstrap_servers:
        # Original key and value bytes, Kafka Connect DLQ headers; the sink counts them.
        op.output("dead_letters_out", dead, kafka.dead_letter_sink(s))
        return
    if sink is None:
        if s.outputs == "stdout":
            sink = StdoutSink()
        else:
            sink = JsonLinesSink(s.output_dir / "dead_letters.jsonl", fresh)
    op.output("dead_letters_out", op.map("format_dead_letters", dead, _dead_letter_line), sink)
