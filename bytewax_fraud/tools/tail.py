"""Print the messages of the predictions or dead-letter topic.

    python -m bytewax_fraud.tools.tail --from-beginning --max 10
    python -m bytewax_fraud.tools.tail --topic dead-letters --from-beginning --stop-at-end

Predictions print as their JSON line. Dead letters (messages with Kafka
Connect's `__connect.errors.*` headers) print as one JSON object with the
headers, the key and the original value (as text when it is UTF-8, else base64).
Partitions are assigned directly, without a consumer group, so nothing is
committed and no group join delays the first message.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from confluent_kafka import Message as KafkaMessage

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, partition_count
from bytewax_fraud.connectors.kafka.errors import KafkaConsumeError, KafkaSetupError
from bytewax_fraud.connectors.kafka.sinks import headers_dict
from bytewax_fraud.errors import FraudError
from bytewax_fraud.settings import Settings, load_settings


def messages(
    config: dict[str, Any],
    topic: str,
    partitions: int,
    from_beginning: bool = True,
    stop_at_end: bool = True,
    idle_timeout: float | None = None,
) -> Iterator[KafkaMessage]:
    """Messages of every partition of `topic`, partition by partition in arrival order.

    Args:
        config: Consumer properties (bootstrap servers, security).
        topic: The topic.
        partitions: Its partition count.
        from_beginning: Start at the oldest message, else at the end.
        stop_at_end: Stop once every partition is read to its end (partition EOF,
            not the reported high watermark, which some brokers update late).
        idle_timeout: Also stop after this many seconds without a message.
    """
    cfg = {
        **config,
        "group.id": "bytewax-fraud-tail",
        "enable.auto.commit": False,
        "enable.partition.eof": stop_at_end,
    }
    consumer = Consumer(cfg)
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    at_end: set[int] = set()
    last = time.monotonic()
    try:
        while not (stop_at_end and len(at_end) == partitions):
            batch = consumer.consume(1000, 0.2)
            if not batch and idle_timeout is not None and time.monotonic() - last > idle_timeout:
                return
            for msg in batch:
                err = msg.error()
                if err is None:
                    last = time.monotonic()
                    at_end.discard(msg.partition())
                    yield msg
                elif err.code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())  # type: ignore[arg-type]
                elif err.fatal() or err.code() in (
                    KafkaError._UNKNOWN_TOPIC,
                    KafkaError.UNKNOWN_TOPIC_OR_PART,
                    KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ):
                    raise KafkaConsumeError(f"cannot read {topic!r}: {err.str()}")
    finally:
        consumer.close()


def render(msg: KafkaMessage) -> str:
    """One line for a message: a prediction's JSON, or a dead letter as a JSON object."""
    headers = headers_dict(msg.headers())  # type: ignore[arg-type]
    value = msg.value() or b""
    if not any(k.startswith("__connect.errors.") for k in headers):
        return value.decode("utf-8", "replace")
    key = msg.key()
    out: dict[str, Any] = {
        "partition": msg.partition(),
        "offset": msg.offset(),
        "headers": headers,
        "key": None if key is None else key.decode("utf-8", "replace"),
    }
    try:
        out["value"] = value.decode("utf-8")
    except UnicodeDecodeError:
        out["value_b64"] = base64.b64encode(value).decode("ascii")
    return json.dumps(out, ensure_ascii=False)


def _parser(s: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bytewax_fraud.tools.tail",
        description="Print predictions (one JSON line each) or dead letters (a JSON object with"
        " the Kafka Connect error headers and the original key and value). Brokers and client"
        " properties come from KAFKA_BOOTSTRAP_SERVERS, FRAUD_KAFKA_PROPERTIES and"
        " FRAUD_KAFKA_CONFIG_FILE.",
    )
    p.add_argument(
        "--topic",
        default=s.topic_predictions,
        help=f"topic to read (default {s.topic_predictions}; dead letters: {s.topic_dead_letters})",
    )
    p.add_argument(
        "--dead-letters",
        action="store_true",
        help="read the dead-letter topic (FRAUD_TOPIC_DEAD_LETTERS)",
    )
    p.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest message, not new ones"
    )
    p.add_argument("--max", type=int, default=None, help="stop after N messages")
    p.add_argument(
        "--stop-at-end", action="store_true", help="stop once every partition is read to its end"
    )
    p.add_argument("--bootstrap-servers", help="brokers host:port,... (KAFKA_BOOTSTRAP_SERVERS)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bytewax_fraud.tools.tail`."""
    try:
        s = load_settings()
        args = _parser(s).parse_args(argv)
        if args.bootstrap_servers:
            s = load_settings(kafka_bootstrap_servers=args.bootstrap_servers)
        topic = s.topic_dead_letters if args.dead_letters else args.topic
        partitions = partition_count(admin_client(kafka_connection(s).admin()), topic)
        if partitions is None:
            raise KafkaSetupError(f"topic {topic!r} does not exist: check --topic")
        out = sys.stdout
        stream = messages(
            kafka_connection(s).consumer(s.start),
            topic,
            partitions,
            args.from_beginning,
            args.stop_at_end,
        )
        for n, msg in enumerate(stream, 1):
            out.write(render(msg) + "\n")
            if args.max is not None and n >= args.max:
                break
        out.flush()
        return 0
    except FraudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into head
        return 0


if __name__ == "__main__":
    sys.exit(main())
