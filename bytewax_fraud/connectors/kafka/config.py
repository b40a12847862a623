"""librdkafka client properties: defaults, a properties file, JSON overrides; secrets masked.

Precedence, lowest first: this module's defaults for the role (consumer,
producer, admin), `FRAUD_KAFKA_CONFIG_FILE` (Java `.properties` format),
`FRAUD_KAFKA_PROPERTIES` (a JSON object), and `KAFKA_BOOTSTRAP_SERVERS`. Any
librdkafka property passes through unchanged, SASL and SSL ones included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bytewax_fraud.kafka.errors import KafkaSetupError
from bytewax_fraud.settings import Settings

#: Keys holding credentials: never printed, logged or put in an error message.
_SECRET_KEY = re.compile(r"password|secret|sasl\.oauthbearer|sasl\.jaas|ssl\.key\.pem", re.I)
MASK = "********"

#: librdkafka's defaults that the limits below must not shrink.
_FETCH_MAX_BYTES = 52_428_800


def is_secret(key: str) -> bool:
    """Whether the property `key` holds a credential."""
    return bool(_SECRET_KEY.search(key))


def masked(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `config` that is safe to log: credential values replaced by a mask."""
    return {k: (MASK if is_secret(k) else v) for k, v in config.items()}


def read_properties_file(path: Path) -> dict[str, str]:
    """Read a Java-style `.properties` file: `key=value` (or `key: value`), `#`/`!` comments.

    Args:
        path: The file.

    Returns:
        The properties, in file order.

    Raises:
        KafkaSetupError: The file cannot be read, or a line is not `key=value`.
    """
    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise KafkaSetupError(
            f"cannot read the Kafka properties file {path}: {exc.strerror};"
            " fix FRAUD_KAFKA_CONFIG_FILE"
        ) from exc
    props: dict[str, str] = {}
    pending = ""
    for n, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#!":
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):  # continuation line
            pending = line[:-1]
            continue
        m = re.match(r"^([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if not m:
            raise KafkaSetupError(
                f"{path}, line {n}: expected key=value; fix the line or comment it out with #"
            )
        props[m.group(1)] = m.group(2)
    return props


def user_properties(s: Settings) -> dict[str, Any]:
    """The properties the operator configured: the file, then the JSON overrides."""
    props: dict[str, Any] = {}
    if s.kafka_config_file is not None:
        props.update(read_properties_file(s.kafka_config_file))
    props.update(s.kafka_properties)
    if s.kafka_bootstrap_servers:
        props["bootstrap.servers"] = s.kafka_bootstrap_servers
    if not props.get("bootstrap.servers"):
        raise KafkaSetupError(
            "no Kafka brokers configured: set KAFKA_BOOTSTRAP_SERVERS (host:port,...)"
        )
    return props


def admin_config(s: Settings) -> dict[str, Any]:
    """Properties of an admin client (metadata checks, topic creation)."""
    return user_properties(s)


def consumer_config(s: Settings) -> dict[str, Any]:
    """Properties of a source partition's consumer.

    Offsets are kept by Bytewax's recovery, never committed to Kafka; a message
    as large as `FRAUD_KAFKA_MAX_MESSAGE_BYTES` is fetched (and then dead-lettered
    if it exceeds `FRAUD_MAX_MESSAGE_BYTES`).
    """
    limit = s.kafka_max_message_bytes
    fetch_max = max(_FETCH_MAX_BYTES, limit)
    config: dict[str, Any] = {
        "group.id": "bytewax-fraud",  # required by librdkafka; partitions are assigned, not joined
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": s.start,
        "max.partition.fetch.bytes": limit,
        "fetch.max.bytes": fetch_max,
        "receive.message.max.bytes": fetch_max + 1_048_576,
    }
    config.update(user_properties(s))
    return config


def producer_config(s: Settings) -> dict[str, Any]:
    """Properties of a sink's producer: durable, idempotent, Kafka's default partitioner.

    `murmur2_random` is the Java client's default partitioner (librdkafka's own
    default is `consistent_random`, a CRC32 hash), so a key lands in the
    partition that `partitioning.partition_for` computes.
    """
    config: dict[str, Any] = {
        "acks": "all",
        "enable.idempotence": True,
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "message.max.bytes": s.kafka_max_message_bytes + 65_536,  # room for headers
    }
    config.update(user_properties(s))
    return config
