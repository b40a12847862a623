"""Predictions and dead letters as Kafka messages: durable, idempotent, never dropped silently.

Predictions are produced asynchronously: a batch is handed to librdkafka and
the worker goes on; delivery reports are served by `poll(0)` on the way. Delivery
is awaited only where a guarantee needs it: when Bytewax snapshots the sink
partition (before the epoch's input offsets become the resume point, and so
before the outbox entries that could re-emit these outputs are pruned) and at
close. Dead letters (rare) are produced and flushed per batch.

Each process has one prediction producer (`acks=all`, idempotence on), shared
by its sink partitions. A message that fails delivery is counted in
`status.STATS.delivery_failures`, logged, and makes the sink raise: at the next
batch, at the snapshot or at close, whichever comes first, so an epoch with an
undelivered prediction never completes. The run then stops instead of losing
output, and a resumed run re-emits everything since the last snapshot
(at-least-once).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterable
from typing import Any

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bytewax_fraud.connectors.kafka.config import masked
from bytewax_fraud.connectors.kafka.errors import (
    KafkaBrokersGone,
    KafkaDeliveryError,
    KafkaSetupError,
)
from bytewax_fraud.partitioning import partition_of_routing_key, routing_key
from bytewax_fraud.records import DeadLetter, ScoredBatch
from bytewax_fraud.status import STATS

log = logging.getLogger(__name__)

#: Kafka Connect's dead-letter-queue header names.
H_TOPIC = "__connect.errors.topic"
H_PARTITION = "__connect.errors.partition"
H_OFFSET = "__connect.errors.offset"
H_TIMESTAMP = "__connect.errors.timestamp"
H_STAGE = "__connect.errors.stage"
H_CLASS = "__connect.errors.exception.class.name"
H_MESSAGE = "__connect.errors.exception.message"

Headers = list[tuple[str, str | bytes | None]]


def dead_letter_message(dead: DeadLetter) -> tuple[bytes | None, bytes, Headers]:
    """The key, value and headers of a dead letter: the original bytes plus Connect's headers.

    The original timestamp header is in epoch milliseconds (Kafka's unit); it is
    left out when the source had no timestamp.
    """
    o = dead.origin
    headers: Headers = [
        (H_TOPIC, o.source.encode()),
        (H_PARTITION, str(o.partition).encode()),
        (H_OFFSET, str(o.offset).encode()),
    ]
    if o.timestamp is not None:
        headers.append((H_TIMESTAMP, str(round(o.timestamp * 1000)).encode()))
    headers += [
        (H_STAGE, dead.stage.encode()),
        (H_CLASS, dead.error_class.encode()),
        (H_MESSAGE, dead.reason.encode()),
    ]
    if dead.key_b64 is not None:
        key: bytes | None = base64.b64decode(dead.key_b64)
    else:
        key = None if dead.key is None else dead.key.encode()
    return key, base64.b64decode(dead.value_b64), headers


class _ProducerPartition:
    """One worker's producer: produce, flush, and fail loudly on undelivered messages."""

    def __init__(self, config: dict[str, Any], topic: str) -> None:
        # Delivery reports (a Python callback each) only for the messages that failed: the
        # sink counts those and raises; a success needs no report (~0.4 us per message).
        # The callback is the producer's, not passed per message: a per-message callback
        # costs another ~0.3 us of `produce` (1.29 vs 0.99 us per message, measured).
        config = {
            "delivery.report.only.error": True,
            **config,
            "on_delivery": self._on_delivery,
        }
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            raise KafkaSetupError(
                f"invalid Kafka producer configuration {masked(config)}: {exc.args[0]};"
                " fix FRAUD_KAFKA_PROPERTIES or FRAUD_KAFKA_CONFIG_FILE"
            ) from exc
        self._topic = topic
        self._timeout_ms = config.get("message.timeout.ms", 300_000)  # librdkafka's default
        self._failed = 0
        self._first_error: KafkaError | None = None
        self._lock = threading.Lock()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            return
        with self._lock:
            self._failed += 1
            if self._first_error is None:
                self._first_error = err
        STATS.record_delivery_failures(1)
        if self._failed <= 10:
            log.error("delivery to %r failed: %s", self._topic, err.str())

    def _produce(self, key: bytes | None, value: bytes | None, headers: Headers | None) -> None:
        while True:
            try:
                self._producer.produce(self._topic, value, key, headers=headers)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as exc:  # e.g. a message over message.max.bytes
                self._on_delivery(exc.args[0], None)  # type: ignore[arg-type]
                return

    def _flush(self) -> None:
        self._producer.flush()
        self._raise_failures()

    def _raise_failures(self) -> None:
        """Raise the named error if a delivery report said a message was not delivered."""
        if self._failed:
            err = self._first_error
            n = self._failed
            if err is not None and err.code() == KafkaError._MSG_TIMED_OUT:
                raise KafkaBrokersGone(
                    f"{n} message(s) to topic {self._topic!r} were not delivered: the brokers"
                    f" did not acknowledge them within message.timeout.ms ({self._timeout_ms} ms),"
                    " they are down or unreachable. Fix: bring the brokers back (check"
                    " KAFKA_BOOTSTRAP_SERVERS and the network), then restart: the job resumes"
                    " from its last snapshot and writes them again"
                )
            raise KafkaDeliveryError(
                f"{n} message(s) to topic {self._topic!r} were not delivered"
                f" (first error: {err.str() if err else '?'}). The run stops so that nothing"
                " is lost: fix the brokers or topic, then resume with the recovery directory"
                " to write them again"
            )

    def close(self) -> None:
        if self._failed:
            # Already raised: Bytewax closes sinks while unwinding that error, and a
            # second one there aborts the process. A resume writes the messages again.
            self._producer.flush(1.0)
            return
        self._flush()


class _PredictionProducer(_ProducerPartition):
    """A process's prediction producer: produce without waiting, deliver on demand."""

    def write(self, scored: ScoredBatch) -> None:
        """Hand one batch's predictions to librdkafka; raise if an earlier one failed."""
        self._raise_failures()
        produce, topic = self._producer.produce, self._topic
        for user, line in zip(scored.user_ids, scored.lines, strict=True):
            try:
                produce(topic, line, user.encode())
            except (BufferError, KafkaException):  # queue full, or one bad message
                self._produce(user.encode(), line, None)
        self._producer.poll(0)  # delivery reports of earlier batches, without waiting

    def deliver(self) -> None:
        """Wait until every message produced so far is acknowledged (or raise)."""
        self._flush()


class _PredictionPartition(StatefulSinkPartition[ScoredBatch, None]):
    """A state partition's predictions: written to the process's producer, delivered at snapshot."""

    def __init__(self, producer: _PredictionProducer) -> None:
        self._producer = producer

    def write_batch(self, values: list[ScoredBatch]) -> None:
        for scored in values:
            self._producer.write(scored)

    def snapshot(self) -> None:
        # The epoch's input offsets become the resume point once every snapshot of the
        # epoch is written: its predictions must be acknowledged by then.
        self._producer.deliver()

    def close(self) -> None:
        self._producer.close()


class _DeadLetterPartition(_ProducerPartition, StatelessSinkPartition[DeadLetter]):
    def write_batch(self, items: list[DeadLetter]) -> None:
        for dead in items:
            self._produce(*dead_letter_message(dead))
        self._flush()


class KafkaPredictionSink(FixedPartitionedSink[ScoredBatch, None]):
    """One message per prediction: key = user id, value = the prediction's JSON line.

    Items are `(routing key, ScoredBatch)`; the sink partitions are named by the
    routing keys (`partitioning.routing_key`), so Bytewax builds each one on the
    worker that holds the state partition and no batch crosses workers.
    """

    def __init__(self, topic: str, producer_config: dict[str, Any], partitions: int = 1) -> None:
        """Write to `topic` with a producer built from `producer_config`.

        Args:
            topic: The predictions topic.
            producer_config: librdkafka properties of the producer.
            partitions: The number of state partitions (= input partitions).
        """
        self.topic = topic
        self.partitions = partitions
        self._config = producer_config
        self._parts = sorted(routing_key(p) for p in range(partitions))
        self._index = {partition_of_routing_key(k): i for i, k in enumerate(self._parts)}
        self._producer: _PredictionProducer | None = None
        self._lock = threading.Lock()

    def list_parts(self) -> list[str]:
        return list(self._parts)

    def part_fn(self, item_key: str) -> int:
        return self._index[partition_of_routing_key(item_key)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PredictionPartition:
        with self._lock:  # one producer per process, whatever its worker threads
            if self._producer is None:
                self._producer = _PredictionProducer(self._config, self.topic)
            return _PredictionPartition(self._producer)


class KafkaDeadLetterSink(DynamicSink[DeadLetter]):
    """One message per dead letter: the original key and value, Kafka Connect DLQ headers."""

    def __init__(self, topic: str, producer_config: dict[str, Any]) -> None:
        """Write to `topic` with a producer built from `producer_config`."""
        self.topic = topic
        self._config = producer_config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _DeadLetterPartition:
        return _DeadLetterPartition(self._config, self.topic)


def headers_dict(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """Message headers as text (for display and tests)."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers or []}
