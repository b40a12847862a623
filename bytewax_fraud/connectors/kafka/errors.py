"""Errors of the Kafka connectors; each message says how to fix it."""

from __future__ import annotations

from bytewax_fraud.errors import FraudError


class KafkaSetupError(FraudError):
    """The brokers, a topic or the client configuration cannot be used."""


class KafkaDeliveryError(FraudError):
    """Messages could not be written to Kafka (the run stops so recovery can replay them)."""


class KafkaConsumeError(FraudError):
    """Reading a topic failed with an error that retrying will not fix."""


class InputDataLost(KafkaConsumeError):
    """Input the job had not read is gone (retention, a re-created or truncated topic)."""


class KafkaBrokersGone(KafkaDeliveryError):
    """The brokers did not acknowledge messages within librdkafka's delivery timeout."""


class KafkaFenced(KafkaDeliveryError):
    """Another process took over this partition's transactional.id; this one must stop."""
