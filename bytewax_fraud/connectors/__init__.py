"""Which source and sinks a run uses, chosen from the settings.

The embedded default reads the built-in generator and writes JSON Lines files
(or stdout); `FRAUD_INPUT` replaces the generator by files (`file_source.py`).
With `KAFKA_BOOTSTRAP_SERVERS` set, the input topic is read and
both outputs go to Kafka topics (`connectors/kafka/`, docs/kafka.md). This is
the only module of the package that reads `Settings`: every connector gets just
the values it needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import FixedPartitionedSource, Source
from bytewax.outputs import Sink

from bytewax_fraud.connectors.file_input import list_input
from bytewax_fraud.connectors.file_source import FileSource
from bytewax_fraud.connectors.files import JsonLinesSink, StdoutSink
from bytewax_fraud.connectors.generator_source import GeneratorSource
from bytewax_fraud.connectors.kafka import (
    KafkaConnection,
    KafkaDeadLetterSink,
    KafkaPredictionSink,
    KafkaTransactionSource,
)
from bytewax_fraud.connectors.kafka.admin import admin_client, check_topics, partition_count
from bytewax_fraud.connectors.kafka.continuity import check_topic_identity, topic_id
from bytewax_fraud.connectors.kafka.transactional import KafkaTransactionalSink
from bytewax_fraud.control.commands import ControlMessage
from bytewax_fraud.control.reader import (
    ControlReader,
    WithControl,
    file_reader,
    kafka_reader,
    null_reader,
)
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.records import RawBatch
from bytewax_fraud.settings import Settings

log = logging.getLogger(__name__)


def kafka_connection(s: Settings) -> KafkaConnection:
    """How this run's Kafka clients reach the brokers."""
    return KafkaConnection(
        bootstrap_servers=s.kafka_bootstrap_servers,
        properties=s.kafka_properties,
        config_file=s.kafka_config_file,
        max_message_bytes=s.kafka_max_message_bytes,
    )


def make_source(s: Settings) -> Source[RawBatch | ControlMessage]:
    """The input of this run, each partition merged with the control input.

    For Kafka the topics are checked first, so a missing topic or a wrong
    partition count fails at start.

    Raises:
        KafkaSetupError: The brokers are unreachable, a topic is missing, or the
            input topic's partition count is not FRAUD_PARTITIONS.
        InputDataLost: The input topic was re-created since the state was written.
        SettingsError: FRAUD_INPUT names no file, or is set together with Kafka.
    """
    inner: FixedPartitionedSource[RawBatch, Any]
    if s.input is not None and s.kafka_bootstrap_servers:
        raise SettingsError(
            "FRAUD_INPUT and KAFKA_BOOTSTRAP_SERVERS are both set: the job reads one input."
            " Fix: unset one of them"
        )
    if s.input is not None:
        inner = FileSource(
            tuple(list_input(s.input)),
            s.partitions,
            lines_per_read=s.batch_max * s.partitions,
            max_line_bytes=s.max_message_bytes,
        )
    elif s.kafka_bootstrap_servers:
        conn = kafka_connection(s)
        admin = admin_client(conn.admin())
        check_topics(
            admin, s.partitions, s.topic_transactions, [s.topic_predictions, s.topic_dead_letters]
        )
        if s.state_dir.is_dir():
            check_topic_identity(
                s.state_dir, s.topic_transactions, topic_id(admin, s.topic_transactions)
            )
        inner = KafkaTransactionSource(
            s.topic_transactions,
            s.partitions,
            conn.consumer(s.start),
            start=s.start,
            stop_at_end=s.kafka_stop_at_end,
            on_data_loss=s.on_data_loss,
            batch_size=s.batch_max,
            batch_timeout_s=s.batch_timeout_ms / 1000.0,
        )
    else:
        inner = GeneratorSource(
            users=s.users,
            seed=s.seed,
            partitions=s.partitions,
            events=s.events,
            rate=s.rate,
            batch_max=s.batch_max,
            batch_timeout_s=s.batch_timeout_ms / 1000.0,
        )
    return WithControl(inner, control_reader(s), _control_name(s), s.control_poll_interval)


def input_kind_of(s: Settings) -> str:
    """The kind of input this run reads: kafka, files or generator (`input_kind.py`)."""
    if s.kafka_bootstrap_servers:
        return "kafka"
    return "files" if s.input is not None else "generator"


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
        conn = kafka_connection(s)
        if partition_count(admin_client(conn.admin()), s.topic_control) is None:
            log.warning(
                "control topic %r does not exist: no model control (create it with 1 partition)",
                s.topic_control,
            )
            return null_reader
        return kafka_reader(conn.consumer(s.start), s.topic_control)
    return null_reader


@dataclass(frozen=True)
class Outputs:
    """Where predictions and dead letters go.

    Attributes:
        predictions: The predictions' sink.
        dead_letters: The dead letters' sink.
        as_lines: Whether the sinks take `(name, JSON lines)` blobs (files, stdout,
            custom sinks) rather than the records themselves (Kafka: one message
            per record, with its key and headers).
    """

    predictions: Sink[Any]
    dead_letters: Sink[Any]
    as_lines: bool
    #: When set, both outputs go to this one sink instead, as `(routing key, item)`:
    #: Kafka transactions per state partition (FRAUD_KAFKA_DELIVERY=exactly-once).
    exactly_once: Sink[Any] | None = None


def make_outputs(s: Settings, fresh: bool) -> Outputs:
    """The sinks of this run; a fresh run truncates the files, a resumed one keeps them."""
    if s.kafka_bootstrap_servers:
        conn = kafka_connection(s)
        producer = conn.producer()
        exactly_once = None
        if s.kafka_delivery == "exactly-once":
            exactly_once = KafkaTransactionalSink(
                s.partitions,
                (s.topic_transactions, s.topic_predictions, s.topic_dead_letters),
                producer,
                conn.consumer(s.start),
                s.kafka_transactional_id or f"bytewax-fraud-{s.topic_predictions}",
                s.kafka_commit_interval or None,
            )
        return Outputs(
            KafkaPredictionSink(s.topic_predictions, producer, s.partitions),
            KafkaDeadLetterSink(s.topic_dead_letters, producer),
            as_lines=False,
            exactly_once=exactly_once,
        )
    if s.kafka_delivery == "exactly-once":
        raise SettingsError(
            "FRAUD_KAFKA_DELIVERY=exactly-once needs Kafka output (set KAFKA_BOOTSTRAP_SERVERS);"
            " the file and stdout outputs have no transactions: unset FRAUD_KAFKA_DELIVERY"
        )
    if s.outputs == "stdout":
        return Outputs(StdoutSink(), StdoutSink(), as_lines=True)
    return Outputs(
        JsonLinesSink(s.output_dir / "predictions.jsonl", fresh),
        JsonLinesSink(s.output_dir / "dead_letters.jsonl", fresh),
        as_lines=True,
    )
