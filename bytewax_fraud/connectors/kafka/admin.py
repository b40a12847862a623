"""Topic checks and creation with the admin client; everything here runs before the first event."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, ClusterMetadata, NewTopic

from bytewax_fraud.connectors.kafka.config import masked
from bytewax_fraud.connectors.kafka.errors import KafkaSetupError

log = logging.getLogger(__name__)

#: Topic configs set at creation. Some brokers (tansu) report only the configs set
#: explicitly, so every topic is created with its configs spelled out.
DEFAULT_TOPIC_CONFIG: dict[str, str] = {
    "cleanup.policy": "delete",
    "retention.ms": str(7 * 86_400_000),
}


def admin_client(config: Mapping[str, Any]) -> AdminClient:
    """An admin client; a bad property is reported without revealing credentials."""
    try:
        return AdminClient(dict(config))
    except KafkaException as exc:
        raise KafkaSetupError(
            f"invalid Kafka client configuration {masked(config)}: {exc.args[0]};"
            " fix FRAUD_KAFKA_PROPERTIES or FRAUD_KAFKA_CONFIG_FILE"
        ) from exc


def cluster_metadata(admin: AdminClient, timeout: float = 15.0) -> ClusterMetadata:
    """Metadata of every topic (listing all of them never auto-creates one)."""
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise KafkaSetupError(
            f"cannot reach the Kafka brokers within {timeout:.0f} s ({exc.args[0]}):"
            " check KAFKA_BOOTSTRAP_SERVERS, the network and the security properties"
        ) from exc


def partition_count(admin: AdminClient, topic: str, timeout: float = 15.0) -> int | None:
    """The partition count of `topic`, or None if it does not exist."""
    md = cluster_metadata(admin, timeout).topics.get(topic)
    if md is None:
        return None
    if md.error is not None:
        raise KafkaSetupError(f"cannot read the metadata of topic {topic!r}: {md.error.str()}")
    return len(md.partitions)


def check_topics(
    admin: AdminClient,
    partitions: int,
    source_topic: str,
    sink_topics: list[str],
    timeout: float = 15.0,
) -> None:
    """Fail unless the input topic has exactly `partitions` partitions and the sinks exist.

    The state is partitioned like the input topic (Kafka partition p is state
    partition p), so another count would put users in the wrong store.

    Raises:
        KafkaSetupError: A topic is missing, or the input's partition count differs.
    """
    topics = cluster_metadata(admin, timeout).topics
    missing = [t for t in [source_topic, *sink_topics] if t not in topics]
    if missing:
        raise KafkaSetupError(
            f"Kafka topic(s) {', '.join(map(repr, missing))} do not exist: create them"
            f" (the input topic {source_topic!r} with {partitions} partitions = FRAUD_PARTITIONS),"
            " e.g. python -m bytewax_fraud.tools.produce --create-topic, or"
            " kafka-topics.sh --create;"
            " or point FRAUD_TOPIC_* at existing topics"
        )
    md = topics[source_topic]
    if md.error is not None:
        raise KafkaSetupError(
            f"cannot read the metadata of topic {source_topic!r}: {md.error.str()}"
        )
    found = len(md.partitions)
    if found != partitions:
        raise KafkaSetupError(
            f"input topic {source_topic!r} has {found} partitions but"
            f" FRAUD_PARTITIONS={partitions}: Kafka partition p is state partition p,"
            " so they must be equal. Fix: set"
            f" FRAUD_PARTITIONS={found} with a new state directory, or re-create the topic with"
            f" {partitions} partitions (partitions cannot be removed, and adding some moves users)"
        )


def create_topic(
    admin: AdminClient,
    topic: str,
    partitions: int,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> bool:
    """Create `topic` unless it exists. Returns whether it was created.

    Raises:
        KafkaSetupError: Creation failed, or the topic exists with another partition count.
    """
    existing = partition_count(admin, topic)
    if existing is not None:
        if existing != partitions:
            raise KafkaSetupError(
                f"topic {topic!r} exists with {existing} partitions, not {partitions}:"
                " delete it first or use the existing count"
            )
        return False
    cfg = {**DEFAULT_TOPIC_CONFIG, **(config or {})}
    futures = admin.create_topics(
        [NewTopic(topic, partitions, replication_factor, config=cfg)],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    try:
        futures[topic].result(timeout)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" in str(exc.args[0]):
            return False
        raise KafkaSetupError(f"cannot create topic {topic!r}: {exc.args[0]}") from exc
    _wait_until_led(admin, topic, partitions, timeout)
    log.info("created topic %r with %d partitions", topic, partitions)
    return True


def _wait_until_led(admin: AdminClient, topic: str, partitions: int, timeout: float) -> None:
    """Wait until every partition of a new topic has a leader in the metadata a client reads.

    Apache Kafka acknowledges a creation once the controller has it; the broker
    that answers metadata requests learns of it a moment later, and a check made
    in between would find the topic missing.
    """
    deadline = time.monotonic() + timeout
    while True:
        md = cluster_metadata(admin, timeout).topics.get(topic)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 for p in md.partitions.values())
        ):
            return
        if time.monotonic() > deadline:
            raise KafkaSetupError(
                f"topic {topic!r} was created but has no leader for every partition after"
                f" {timeout:.0f} s: check the brokers' health"
            )
        time.sleep(0.05)


def create_job_topics(
    admin: AdminClient,
    partitions: int,
    transactions: str,
    predictions: str,
    dead_letters: str,
    max_message_bytes: int,
    replication_factor: int = 1,
) -> list[str]:
    """Create the input, predictions and dead-letter topics that do not exist yet.

    All three get `partitions` partitions; every topic accepts messages of up
    to `max_message_bytes` (plus room for headers), so an oversized input can
    still be written to the dead-letter topic. Returns the topics created.
    """
    config = {"max.message.bytes": str(max_message_bytes + 65_536)}
    return [
        t
        for t in (transactions, predictions, dead_letters)
        if create_topic(admin, t, partitions, replication_factor, config)
    ]
