"""Predictions and dead letters as Kafka messages: durable, idempotent, never dropped silently.

Each worker has one producer (`acks=all`, idempotence on). A batch is produced
and then flushed; a message that fails delivery is counted in
`status.STATS.delivery_failures`, logged, and makes the sink raise after the
flush. The run then stops instead of losing output, and a resumed run
re-emits everything since the last snapshot (at-least-once).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Iterable
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bytewax_fraud.connectors.kafka.config import masked
from bytewax_fraud.connectors.kafka.errors import (
    KafkaBrokersGone,
    KafkaDeliveryError,
    KafkaSetupError,
)
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
        config = {"delivery.report.only.error": True, **config}
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
                self._producer.produce(
                    self._topic, value, key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room.
                self._producer.poll(0.05)
            except KafkaException as exc:  # e.g. a message over message.max.bytes
                self._on_delivery(exc.args[0], None)  # type: ignore[arg-type]
                return

    def _flush(self) -> None:
        self._producer.flush()
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


class _PredictionPartition(_ProducerPartition, StatelessSinkPartition[tuple[str, ScoredBatch]]):
    def write_batch(self, items: list[tuple[str, ScoredBatch]]) -> None:
        produce, topic, report = self._producer.produce, self._topic, self._on_delivery
        for _, scored in items:
            for user, line in zip(scored.user_ids, scored.lines, strict=True):
                try:
                    produce(topic, line, user.encode(), on_delivery=report)
                except (BufferError, KafkaException):  # queue full, or one bad message
                    self._produce(user.encode(), line, None)
            self._producer.poll(0)
        self._flush()


class _DeadLetterPartition(_ProducerPartition, StatelessSinkPartition[DeadLetter]):
    def write_batch(self, items: list[DeadLetter]) -> None:
        for dead in items:
            self._produce(*dead_letter_message(dead))
        self._flush()


class KafkaPredictionSink(DynamicSink[tuple[str, ScoredBatch]]):
    """One message per prediction: key = user id, value = the prediction's JSON line."""

    def __init__(self, topic: str, producer_config: dict[str, Any]) -> None:
        """Write to `topic` with a producer built from `producer_config`."""
        self.topic = topic
        self._config = producer_config

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _PredictionPartition:
        return _PredictionPartition(self._config, self.topic)


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
