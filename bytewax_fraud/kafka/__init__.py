"""Kafka in and out: the transactions source, the prediction and dead-letter sinks, admin checks.

Used when `KAFKA_BOOTSTRAP_SERVERS` is set (see `connectors.py` and docs/kafka.md).
"""

from __future__ import annotations

from bytewax_fraud.kafka.admin import admin_client, check_topics
from bytewax_fraud.kafka.config import admin_config, consumer_config, producer_config
from bytewax_fraud.kafka.continuity import check_topic_identity, topic_id
from bytewax_fraud.kafka.errors import (
    InputDataLost,
    KafkaConsumeError,
    KafkaDeliveryError,
    KafkaSetupError,
)
from bytewax_fraud.kafka.sinks import KafkaDeadLetterSink, KafkaPredictionSink
from bytewax_fraud.kafka.source import KafkaTransactionSource
from bytewax_fraud.settings import Settings

__all__ = [
    "KafkaConsumeError",
    "KafkaDeadLetterSink",
    "KafkaDeliveryError",
    "KafkaPredictionSink",
    "KafkaSetupError",
    "InputDataLost",
    "KafkaTransactionSource",
    "kafka_source",
]


def kafka_source(s: Settings) -> KafkaTransactionSource:
    """The input topic as a source, after checking every topic of the run (fails at start).

    Raises:
        KafkaSetupError: The brokers are unreachable, a topic is missing, or the
            input topic's partition count is not FRAUD_PARTITIONS.
    """
    admin = admin_client(admin_config(s))
    check_topics(
        admin, s.partitions, s.topic_transactions, [s.topic_predictions, s.topic_dead_letters]
    )
    if s.state_dir.is_dir():
        check_topic_identity(
            s.state_dir, s.topic_transactions, topic_id(admin, s.topic_transactions)
        )
    return KafkaTransactionSource(
        s.topic_transactions,
        s.partitions,
        consumer_config(s),
        start=s.start,
        stop_at_end=s.kafka_stop_at_end,
        batch_size=s.batch_max,
        batch_timeout_s=s.batch_timeout_ms / 1000.0,
        on_data_loss=s.on_data_loss,
    )


def prediction_sink(s: Settings) -> KafkaPredictionSink:
    """The predictions topic as a sink."""
    return KafkaPredictionSink(s.topic_predictions, producer_config(s))


def dead_letter_sink(s: Settings) -> KafkaDeadLetterSink:
    """The dead-letter topic as a sink."""
    return KafkaDeadLetterSink(s.topic_dead_letters, producer_config(s))
