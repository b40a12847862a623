"""Kafka in and out: the transactions source, the prediction and dead-letter sinks, admin checks.

Used when `KAFKA_BOOTSTRAP_SERVERS` is set (the choice is made in `connectors/__init__.py`;
operators' guide: docs/kafka.md). Every client is configured from one `KafkaConnection`.
"""

from __future__ import annotations

from bytewax_fraud.connectors.kafka.config import KafkaConnection
from bytewax_fraud.connectors.kafka.errors import (
    InputDataLost,
    KafkaConsumeError,
    KafkaDeliveryError,
    KafkaSetupError,
)
from bytewax_fraud.connectors.kafka.sinks import KafkaDeadLetterSink, KafkaPredictionSink
from bytewax_fraud.connectors.kafka.source import KafkaTransactionSource

__all__ = [
    "InputDataLost",
    "KafkaConnection",
    "KafkaConsumeError",
    "KafkaDeadLetterSink",
    "KafkaDeliveryError",
    "KafkaPredictionSink",
    "KafkaSetupError",
    "KafkaTransactionSource",
]
