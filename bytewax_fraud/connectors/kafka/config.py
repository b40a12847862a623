"""librdkafka client properties: defaults, a properties file, JSON overrides; secrets masked.

Precedence, lowest first: this module's defaults for the role (consumer,
producer, admin), a properties file (`FRAUD_KAFKA_CONFIG_FILE`, Java `.properties`
format), JSON overrides (`FRAUD_KAFKA_PROPERTIES`), and the bootstrap servers
(`KAFKA_BOOTSTRAP_SERVERS`). Any librdkafka property passes through unchanged,
SASL and SSL ones included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax_fraud.connectors.kafka.errors import KafkaSetupError

#: Keys holding credentials: never printed, logged or put in an error message.
_SECRET_KEY = re.compile(r"password|secret|sasl\.oauthbearer|sasl\.jaas|ssl\.key\.pem", re.I)
MASK = "********"

#: librdkafka's defaults that the limits below must not shrink.
_FETCH_MAX_BYTES = 52_428_800
#: The consumers' `fetch.wait.max.ms` unless FRAUD_KAFKA_PROPERTIES sets it.
FETCH_WAIT_MS = 10


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


@dataclass(frozen=True)
class KafkaConnection:
    """How to reach the brokers: every client of a run is configured from this.

    Attributes:
        bootstrap_servers: `host:port,...` (overrides the file and the properties).
        properties: librdkafka properties (FRAUD_KAFKA_PROPERTIES).
        config_file: A `.properties` file read before `properties` (FRAUD_KAFKA_CONFIG_FILE).
        max_message_bytes: Largest message read or written (FRAUD_KAFKA_MAX_MESSAGE_BYTES).
    """

    bootstrap_servers: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict, repr=False)
    config_file: Path | None = None
    max_message_bytes: int = 8 * 1024 * 1024

    def user_properties(self) -> dict[str, Any]:
        """The properties the operator configured: the file, then the JSON overrides."""
        props: dict[str, Any] = {}
        if self.config_file is not None:
            props.update(read_properties_file(self.config_file))
        props.update(self.properties)
        if self.bootstrap_servers:
            props["bootstrap.servers"] = self.bootstrap_servers
        if not props.get("bootstrap.servers"):
            raise KafkaSetupError(
                "no Kafka brokers configured: set KAFKA_BOOTSTRAP_SERVERS (host:port,...)"
            )
        return props

    def admin(self) -> dict[str, Any]:
        """Properties of an admin client (metadata checks, topic creation)."""
        return self.user_properties()

    def consumer(self, start: str = "earliest") -> dict[str, Any]:
        """Properties of a source partition's consumer.

        Offsets are kept by Bytewax's recovery, never committed to Kafka; a message
        as large as `max_message_bytes` is fetched (and then dead-lettered if it
        exceeds FRAUD_MAX_MESSAGE_BYTES).

        Args:
            start: Where a partition without a stored position starts: `earliest`
                or `latest` (FRAUD_START).
        """
        limit = self.max_message_bytes
        fetch_max = max(_FETCH_MAX_BYTES, limit)
        config: dict[str, Any] = {
            "group.id": "bytewax-fraud",  # required by librdkafka; partitions are assigned
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": start,
            "max.partition.fetch.bytes": limit,
            "fetch.max.bytes": fetch_max,
            "receive.message.max.bytes": fetch_max + 1_048_576,
            # How long the broker may hold a fetch while the partition has nothing new.
            # Kafka answers as soon as data arrives, so this only bounds an idle wait;
            # brokers that hold the whole time (tansu) add it to every message's latency
            # (tansu alone at 25k msg/s, p50 / p99: 136 / 274 ms
            # with librdkafka's 500 ms default, 20 / 37 ms with 10; docs/kafka.md).
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
        config.update(self.user_properties())
        return config

    def producer(self) -> dict[str, Any]:
        """Properties of a sink's producer: durable, idempotent, Kafka's default partitioner.

        `murmur2_random` is the Java client's default partitioner (librdkafka's own
        default is `consistent_random`, a CRC32 hash), so a key lands in the
        partition that `partitioning.partition_for` computes.
        """
        config: dict[str, Any] = {
            "acks": "all",
            "enable.idempotence": True,
            "partitioner": "murmur2_random",
            # A sink hands librdkafka a whole scored batch at once, so the batch is one
            # request without lingering; each ms of linger is a ms every prediction waits
            # (produced -> read p50 7.2 -> 3.4 ms going from 5 to 1 at 12.8k msg/s;
            # docs/kafka.md).
            "linger.ms": 1,
            "message.max.bytes": self.max_message_bytes + 65_536,  # room for headers
        }
        config.update(self.user_properties())
        return config
