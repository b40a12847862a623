"""Write generated transactions (and optionally bad inputs) to the transactions topic.

    python -m bytewax_fraud.tools.produce --events 100000 --users 10000 --create-topic

Each event is keyed by its user id and placed by Kafka's default partitioner
(murmur2), which is how the job expects its input: Kafka partition p holds the
users of state partition p. The placement of every delivered message is
checked against `partitioning.partition_for`.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, partition_count
from bytewax_fraud.connectors.kafka.errors import KafkaDeliveryError, KafkaSetupError
from bytewax_fraud.errors import FraudError
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.settings import Settings, load_settings

_USER = b'"user_id":"'


def user_key(value: bytes) -> bytes:
    """The user id of a generated event, as the message key (the generator's fixed layout)."""
    start = value.index(_USER) + len(_USER)
    return value[start : value.index(b'"', start)]


def generated(users: int, seed: int, events: int) -> Iterator[tuple[bytes | None, bytes]]:
    """(key, value) of the generator's global stream: `events` events keyed by user id."""
    gen = TransactionGenerator(users=users, seed=seed, partition_count=1)
    for value in itertools.islice(gen.events(), events):
        yield user_key(value), value


def bad_inputs(path: Path) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every line of a bad-input corpus (JSON objects with `value_b64`).

    The key is `key_b64` decoded if the line has one, else the case's `kind`.
    """
    out: list[tuple[bytes | None, bytes]] = []
    for line in path.read_text("utf-8").splitlines():
        if line.strip():
            case = json.loads(line)
            if "key_b64" in case:
                key: bytes | None = base64.b64decode(case["key_b64"])
            else:
                key = str(case.get("kind", "bad")).encode()
            out.append((key, base64.b64decode(case["value_b64"])))
    return out


def interleave(
    good: Iterable[tuple[bytes | None, bytes]], bad: list[tuple[bytes | None, bytes]], every: int
) -> Iterator[tuple[bytes | None, bytes]]:
    """The good messages with one bad message after every `every` of them (the rest at the end)."""
    pending = iter(bad)
    for i, msg in enumerate(good, 1):
        yield msg
        if i % every == 0:
            nxt = next(pending, None)
            if nxt is not None:
                yield nxt
    yield from pending


class PlacementChecker:
    """Delivery callback: counts failures and messages not where murmur2 says they belong."""

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.delivered = 0
        self.failed = 0
        self.misplaced = 0
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed += 1
            self.first_error = self.first_error or err.str()
            return
        self.delivered += 1
        key = msg.key()
        if key is not None:
            expected = partition_for(key.decode("utf-8", "replace"), self.partitions)
            if msg.partition() != expected:
                self.misplaced += 1


def produce(
    config: dict[str, Any],
    topic: str,
    partitions: int,
    messages: Iterable[tuple[bytes | None, bytes]],
) -> PlacementChecker:
    """Produce every (key, value) to `topic`, flush, and check delivery and placement.

    Raises:
        KafkaDeliveryError: A message was not delivered, or not placed by murmur2.
    """
    producer = Producer(config)
    check = PlacementChecker(partitions)
    for n, (key, value) in enumerate(messages, 1):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=check)
                break
            except BufferError:
                producer.poll(0.05)
        if n % 1000 == 0:
            producer.poll(0)
    producer.flush()
    if check.failed:
        raise KafkaDeliveryError(
            f"{check.failed} message(s) not delivered to {topic!r} (first: {check.first_error})"
        )
    if check.misplaced:
        raise KafkaDeliveryError(
            f"{check.misplaced} message(s) landed in another partition than murmur2(key) says:"
            " remove any 'partitioner' override from the Kafka properties"
        )
    return check


def _parser(defaults: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bytewax_fraud.tools.produce",
        description="Write generated transactions (keyed by user id) to Kafka, optionally"
        " interleaved with a corpus of bad inputs. Brokers and client properties come from"
        " KAFKA_BOOTSTRAP_SERVERS, FRAUD_KAFKA_PROPERTIES and FRAUD_KAFKA_CONFIG_FILE.",
    )
    p.add_argument("--events", type=int, default=defaults.events or 10_000, help="events to write")
    p.add_argument("--users", type=int, default=defaults.users, help="users in the generator")
    p.add_argument("--seed", type=int, default=defaults.seed, help="generator seed")
    p.add_argument("--topic", default=defaults.topic_transactions, help="topic to write")
    p.add_argument(
        "--partitions",
        type=int,
        default=defaults.partitions,
        help="partitions of the topics created by --create-topic (default FRAUD_PARTITIONS)",
    )
    p.add_argument(
        "--create-topic",
        action="store_true",
        help="create the input, predictions and dead-letter topics if missing",
    )
    p.add_argument(
        "--bad-inputs",
        type=Path,
        help="JSON Lines of bad inputs, one value_b64 per line (tests/data/bad_inputs.jsonl)",
    )
    p.add_argument("--bad-every", type=int, default=100, help="one bad input after every N events")
    p.add_argument("--bootstrap-servers", help="brokers host:port,... (KAFKA_BOOTSTRAP_SERVERS)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bytewax_fraud.tools.produce`."""
    try:
        defaults = load_settings()
        args = _parser(defaults).parse_args(argv)
        s = defaults
        if args.bootstrap_servers:
            s = load_settings(kafka_bootstrap_servers=args.bootstrap_servers)
        admin = admin_client(kafka_connection(s).admin())
        if args.create_topic:
            created = create_job_topics(
                admin,
                args.partitions,
                args.topic,
                s.topic_predictions,
                s.topic_dead_letters,
                s.kafka_max_message_bytes,
            )
            if created:
                print(f"created {', '.join(created)}", file=sys.stderr)
        partitions = partition_count(admin, args.topic)
        if partitions is None:
            raise KafkaSetupError(
                f"topic {args.topic!r} does not exist: pass --create-topic or create it"
            )
        messages: Iterable[tuple[bytes | None, bytes]] = generated(
            args.users, args.seed, args.events
        )
        if args.bad_inputs:
            messages = interleave(messages, bad_inputs(args.bad_inputs), max(args.bad_every, 1))
        t0 = time.monotonic()
        check = produce(kafka_connection(s).producer(), args.topic, partitions, messages)
        took = time.monotonic() - t0
        print(
            f"wrote {check.delivered:,} messages to {args.topic!r} ({partitions} partitions)"
            f" in {took:.1f} s ({check.delivered / max(took, 1e-9):,.0f} msg/s);"
            " every keyed message is in its murmur2 partition",
            file=sys.stderr,
        )
        return 0
    except FraudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
