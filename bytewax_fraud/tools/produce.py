"""Write generated transactions (and optionally bad inputs) to the transactions topic.

    python -m bytewax_fraud.tools.produce --events 100000 --users 10000 --create-topic
    python -m bytewax_fraud.tools.produce --events 1000000 --to-file events.jsonl.gz

Each event is keyed by its user id and placed by Kafka's default partitioner
(murmur2), which is how the job expects its input: Kafka partition p holds the
users of state partition p. The placement of every delivered message is
checked against `partitioning.partition_for`. `--partitioner consistent_random`
(librdkafka's own default, CRC32) shows what a misconfigured producer does: most
users land on other partitions, and the job rejects their events as
`WrongPartition` dead letters.

Each record's Kafka timestamp is the event's own time (`--timestamps event`, a
replay of recorded data), or the producer's clock (`--timestamps now`). The job
rejects events too far ahead of their record's timestamp (`FRAUD_MAX_FUTURE_SKEW`).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import itertools
import json
import re
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
_TIMESTAMP = re.compile(rb'"timestamp":(-?[0-9.eE+]+)[,}]')
#: librdkafka partitioners that hash the key with murmur2 (Kafka's default).
MURMUR2 = frozenset({"murmur2", "murmur2_random"})


def event_time_ms(value: bytes) -> int | None:
    """The epoch-seconds `timestamp` of an event, in ms (None: none found, e.g. a bad input)."""
    m = _TIMESTAMP.search(value)
    if m is None:
        return None
    try:
        return round(float(m.group(1)) * 1000)
    except (ValueError, OverflowError):
        return None


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
    *,
    event_timestamps: bool = True,
    expect_murmur2: bool = True,
) -> PlacementChecker:
    """Produce every (key, value) to `topic`, flush, and check delivery and placement.

    Args:
        config: Producer properties.
        topic: The topic.
        partitions: Its partition count.
        messages: (key, value) pairs.
        event_timestamps: Stamp each record with its event's time (a message
            without one gets the previous message's); else the producer's clock.
        expect_murmur2: Fail if a keyed message lands elsewhere than murmur2 says
            (off: only count them, to show a misconfigured producer).

    Raises:
        KafkaDeliveryError: A message was not delivered, or not placed by murmur2.
    """
    producer = Producer(config)
    check = PlacementChecker(partitions)
    stamp = 0  # 0: the producer's clock
    for n, (key, value) in enumerate(messages, 1):
        if event_timestamps:
            stamp = event_time_ms(value) or stamp
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=check, timestamp=stamp)
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
    if check.misplaced and expect_murmur2:
        raise KafkaDeliveryError(
            f"{check.misplaced} message(s) landed in another partition than murmur2(key) says:"
            " remove any 'partitioner' override from the Kafka properties"
        )
    return check


def write_file(path: Path, messages: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Write the messages' values as JSON Lines to `path` (gzipped if it ends in .gz).

    Returns:
        The number of lines written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        chunk: list[bytes] = []
        for _, value in messages:
            chunk.append(value)
            if len(chunk) == 4096:
                f.write(b"\n".join(chunk) + b"\n")
                n += len(chunk)
                chunk = []
        if chunk:
            f.write(b"\n".join(chunk) + b"\n")
            n += len(chunk)
    return n


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
    p.add_argument(
        "--partitioner",
        default="murmur2_random",
        help="librdkafka partitioner (default murmur2_random, Kafka's; consistent_random or"
        " random show what the job does with a misconfigured producer: WrongPartition)",
    )
    p.add_argument(
        "--timestamps",
        choices=("event", "now"),
        default="event",
        help="record timestamps: the event's own time (default) or the producer's clock",
    )
    p.add_argument("--bootstrap-servers", help="brokers host:port,... (KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument(
        "--to-file",
        type=Path,
        metavar="PATH",
        help="write the events as JSON Lines to PATH (gzipped if it ends in .gz) instead of"
        " Kafka: an input for FRAUD_INPUT",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bytewax_fraud.tools.produce`."""
    try:
        defaults = load_settings()
        args = _parser(defaults).parse_args(argv)
        s = defaults
        if args.to_file is not None:
            return _to_file(args)
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
        config = {**kafka_connection(s).producer(), "partitioner": args.partitioner}
        murmur2 = args.partitioner in MURMUR2
        print(
            f"producer: key = user_id, partitioner = {args.partitioner}"
            + (
                " (Kafka's default: what the job expects)"
                if murmur2
                else " (NOT murmur2: users land on other partitions than their state's, and"
                " the job rejects their events as WrongPartition dead letters; fix: key by"
                " user_id with partitioner=murmur2_random)"
            ),
            file=sys.stderr,
        )
        t0 = time.monotonic()
        check = produce(
            config,
            args.topic,
            partitions,
            messages,
            event_timestamps=args.timestamps == "event",
            expect_murmur2=murmur2,
        )
        took = time.monotonic() - t0
        placed = (
            "every keyed message is in its murmur2 partition"
            if not check.misplaced
            else f"{check.misplaced:,} messages are NOT in their user's murmur2 partition"
        )
        print(
            f"wrote {check.delivered:,} messages to {args.topic!r} ({partitions} partitions)"
            f" in {took:.1f} s ({check.delivered / max(took, 1e-9):,.0f} msg/s); {placed}",
            file=sys.stderr,
        )
        return 0
    except FraudError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _to_file(args: argparse.Namespace) -> int:
    messages: Iterable[tuple[bytes | None, bytes]] = generated(args.users, args.seed, args.events)
    if args.bad_inputs:
        messages = interleave(messages, bad_inputs(args.bad_inputs), max(args.bad_every, 1))
    t0 = time.monotonic()
    n = write_file(args.to_file, messages)
    took = time.monotonic() - t0
    print(
        f"wrote {n:,} lines to {args.to_file} in {took:.1f} s: FRAUD_INPUT={args.to_file}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
