"""The transactions topic as a Bytewax source: Kafka partition p is state partition p.

Each partition reader owns one consumer for its topic-partition, assigned
(never a consumer group), and implements Bytewax's public
`StatefulSourcePartition`: resume state = the next offset to read, nothing
committed to Kafka. A consumed batch becomes one `RawBatch` (columns of
values, keys, offsets, timestamps), with no intermediate object per message.
Reads never wait: see `KafkaPartitionReader.next_batch` and `watermarks.py`.

Each input partition's key is `partitioning.routing_key(p)`, the same key the
scoring step routes partition p by, so a partition is read on the worker that
holds its state and events do not cross workers.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka import KafkaError as ConfluentError

from bytewax_fraud.connectors.kafka.continuity import OnDataLoss, resume_offset
from bytewax_fraud.connectors.kafka.errors import KafkaConsumeError
from bytewax_fraud.connectors.kafka.watermarks import WatermarkQuery
from bytewax_fraud.partitioning import partition_of_routing_key, routing_key
from bytewax_fraud.process import shutdown
from bytewax_fraud.records import RawBatch
from bytewax_fraud.status import STATS

log = logging.getLogger(__name__)

#: Consumer errors that retrying cannot fix; every other error is logged while
#: librdkafka reconnects and retries by itself (a broker outage, a leader move).
_FATAL = frozenset(
    {
        ConfluentError._UNKNOWN_TOPIC,
        ConfluentError._UNKNOWN_PARTITION,
        ConfluentError.UNKNOWN_TOPIC_OR_PART,
        ConfluentError.TOPIC_AUTHORIZATION_FAILED,
        ConfluentError.GROUP_AUTHORIZATION_FAILED,
        ConfluentError.SASL_AUTHENTICATION_FAILED,
        ConfluentError._AUTHENTICATION,
        ConfluentError._SSL,
    }
)

#: The broker no longer has the offset being read (see `continuity.py`).
_OUT_OF_RANGE = frozenset({ConfluentError._AUTO_OFFSET_RESET, ConfluentError.OFFSET_OUT_OF_RANGE})

#: How long the broker may take to tell a partition's watermarks (on a thread of its own).
WATERMARK_TIMEOUT_S = 15.0
#: How often a reader waiting for its watermarks looks again.
_QUERY_POLL_S = 0.01


class KafkaTransactionSource(FixedPartitionedSource[RawBatch, int]):
    """Reads `topic` (with `partitions` partitions, checked at start) as `RawBatch`es."""

    def __init__(
        self,
        topic: str,
        partitions: int,
        consumer_config: dict[str, Any],
        *,
        start: str = "earliest",
        stop_at_end: bool = False,
        batch_size: int = 1024,
        batch_timeout_s: float = 0.02,
        on_data_loss: OnDataLoss = "fail",
    ) -> None:
        """Read `topic`; the caller has checked that it has `partitions` partitions."""
        self.topic = topic
        self.on_data_loss = on_data_loss
        self.partitions = partitions
        self._config = consumer_config
        self._start = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self._stop_at_end = stop_at_end
        self._batch_size = batch_size
        self._timeout = batch_timeout_s

    def list_parts(self) -> list[str]:
        return [routing_key(p) for p in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[RawBatch, int]:
        # Never let librdkafka jump over lost input by itself: an offset that is gone
        # becomes an error event, handled by `continuity.resume_offset`.
        config = {
            **self._config,
            "enable.partition.eof": self._stop_at_end,
            "auto.offset.reset": "error",
        }
        return KafkaPartitionReader(
            step_id,
            config,
            self.topic,
            partition_of_routing_key(for_part),
            self._start,
            resume_state,
            self._batch_size,
            self._timeout,
            self.on_data_loss,
        )


class KafkaPartitionReader(StatefulSourcePartition[RawBatch, int]):
    """One topic-partition read by a consumer of its own; `snapshot()` is the next offset."""

    def __init__(
        self,
        step_id: str,
        config: dict[str, Any],
        topic: str,
        partition: int,
        starting_offset: int,
        resume_state: int | None,
        batch_size: int,
        timeout_s: float,
        on_data_loss: OnDataLoss = "fail",
    ) -> None:
        """Assign the partition at `resume_state` (else `starting_offset`); reads start at once.

        Args:
            step_id: The input step's id (names the reader in logs).
            config: librdkafka consumer properties.
            topic: The topic read.
            partition: Its partition read here.
            starting_offset: Where a fresh run starts (OFFSET_BEGINNING or OFFSET_END).
            resume_state: The next offset to read, from the last snapshot (None: fresh).
            batch_size: Most messages taken by one read.
            timeout_s: How long after a short read the partition is read again.
            on_data_loss: What to do when input below the next offset was deleted.
        """
        self._step_id = step_id
        self._topic = topic
        self._part_idx = partition
        self._tp = TopicPartition(topic, partition)
        self._offset = starting_offset if resume_state is None else resume_state
        self._batch_size = batch_size
        self._timeout = timeout_s
        self._on_data_loss = on_data_loss
        self._eof = False
        #: Monotonic time of the next read; 0: read at once (the last read filled a batch).
        self._next_read = 0.0
        self._errors_logged = 0
        #: A watermark query in flight, and whether its high watermark is to be trusted.
        self._query: WatermarkQuery | None = None
        self._trust_end = False
        self._consumer = Consumer(config)
        self._consumer.assign([TopicPartition(topic, partition, self._offset)])
        if resume_state is not None and resume_state >= 0:
            self._start_check(trust_end=False)

    def next_batch(self) -> list[RawBatch]:
        """What has arrived (up to `batch_size`), as one `RawBatch`; never waits for more.

        A worker reads all its partitions in turn, and a wait in one would hold up
        the others. What has arrived is taken now; after a short read the next one
        comes `timeout_s` later, so batches still fill at moderate rates and no
        message waits longer than that in the consumer's queue (see `next_awake`).
        While the partition's watermarks are being asked for (at open after a
        resume, or after the broker answered "out of range"), nothing is read from it.
        """
        if self._eof:
            raise StopIteration()
        if shutdown.requested():
            # A graceful stop: end here; the snapshot is the next offset to read.
            if self._offset < 0:
                self._resolve_start()
            raise StopIteration()
        if self._query is not None and not self._finish_check(self._query):
            return []
        msgs = self._consumer.consume(self._batch_size, 0)
        self._next_read = 0.0 if len(msgs) >= self._batch_size else time.monotonic() + self._timeout
        now_ns = time.time_ns()
        if any([m.error() for m in msgs]):
            msgs = self._without_errors(msgs)
        # Columns straight from the messages, one comprehension per field.
        values: list[bytes | None] = [m.value() for m in msgs]
        keys: list[bytes | None] = [m.key() for m in msgs]
        offsets: list[int] = [m.offset() for m in msgs]  # type: ignore[misc]
        stamps: list[float | None] = [
            None if t == TIMESTAMP_NOT_AVAILABLE else ms / 1000.0
            for t, ms in [m.timestamp() for m in msgs]
        ]
        if not offsets:
            if self._offset < 0:
                self._resolve_start()
            self._record_lag()
            return []
        self._offset = offsets[-1] + 1
        self._record_lag()
        offs = np.asarray(offsets, np.int64)
        return [RawBatch(self._topic, self._part_idx, offs, values, keys, stamps, now_ns)]

    def _without_errors(self, msgs: list[Message]) -> list[Message]:
        """The messages that carry data; each error event is handled (end, gap, outage)."""
        kept = []
        for msg in msgs:
            err = msg.error()
            if err is None:
                kept.append(msg)
            else:
                self._on_error(err)
        return kept

    def next_awake(self) -> datetime | None:
        """Now after a full batch (more is likely waiting), else `timeout_s` after the last read.

        While a watermark query is in flight: soon, to see whether it has answered.
        """
        if self._eof:
            return None
        if self._query is not None:
            return datetime.now(UTC) + timedelta(seconds=_QUERY_POLL_S)
        if self._next_read == 0.0:
            return None
        delay = self._next_read - time.monotonic()
        return datetime.now(UTC) + timedelta(seconds=max(delay, 0.0))

    def snapshot(self) -> int:
        """The next offset to read."""
        return self._offset

    def close(self) -> None:
        """Close the consumer (once a watermark query still using it has returned)."""
        if self._query is not None:
            self._query.close_consumer(self._consumer)
        else:
            self._consumer.close()

    def _on_error(self, err: ConfluentError) -> None:
        code = err.code()
        if code == ConfluentError._PARTITION_EOF:
            # Emit this batch; StopIteration comes on the next call.
            self._eof = True
            return
        if code in _OUT_OF_RANGE:
            if self._query is None:
                self._start_check(trust_end=True)
            return
        if err.fatal() or code in _FATAL:
            raise KafkaConsumeError(
                f"cannot read {self._topic!r} partition {self._part_idx}: {err.str()}."
                " Check that the topic exists, the ACLs and the security properties"
            )
        # Transient (broker down, connection reset): librdkafka retries by itself.
        if self._errors_logged < 100:
            self._errors_logged += 1
            log.warning(
                "reading %r partition %d: %s (retrying)", self._topic, self._part_idx, err.str()
            )

    def _start_check(self, trust_end: bool) -> None:
        """Ask for the partition's watermarks in the background; reads pause until they come.

        At open, only the earliest offset is compared: some brokers (tansu) report a
        high watermark that lags the true end. After the broker said "out of range",
        the end is compared too.
        """
        self._trust_end = trust_end
        self._query = WatermarkQuery(self._consumer, self._tp, WATERMARK_TIMEOUT_S)

    def _finish_check(self, query: WatermarkQuery) -> bool:
        """Apply the watermarks once they are in; False while the query still runs.

        The next offset must still exist; a gap is skipped only if FRAUD_ON_DATA_LOSS=skip.
        """
        try:
            answer = query.result()
        except KafkaException as exc:
            self._query = None
            if self._trust_end:
                raise KafkaConsumeError(
                    f"{self._topic!r} partition {self._part_idx}: offset {self._offset} is out of"
                    f" range and the broker cannot say why ({exc.args[0]}). Check the topic and"
                    " the brokers, then restart"
                ) from exc
            log.warning(
                "%r partition %d: cannot check resume offset %d (%s)",
                self._topic,
                self._part_idx,
                self._offset,
                exc.args[0],
            )
            return True
        if answer is None:
            return False
        self._query = None
        low, high = answer
        offset, gap = resume_offset(
            self._topic,
            self._part_idx,
            self._offset,
            low,
            high if self._trust_end else None,
            self._on_data_loss,
        )
        if gap is not None:
            log.warning(
                "%s; continuing at offset %d (FRAUD_ON_DATA_LOSS=skip)", gap.describe(), low
            )
            STATS.record_input_lost(self._part_idx, gap.lost)
        if gap is not None or self._trust_end:
            self._offset = offset
            self._consumer.assign([TopicPartition(self._topic, self._part_idx, offset)])
        return True

    def _record_lag(self) -> None:
        """Report position and high-water mark (librdkafka's cached value: no broker call).

        librdkafka updates the cached high-water mark from every fetch response, so
        it is at most one fetch old; before the first fetch it is unknown (negative).
        """
        if self._offset < 0:
            return
        _, high = self._consumer.get_watermark_offsets(self._tp, cached=True)
        if high >= 0:
            STATS.record_input(self._part_idx, self._offset, max(high, self._offset))

    def _resolve_start(self) -> None:
        """Replace the logical start (beginning/end) by a real offset once it is known.

        A snapshot of OFFSET_END would make a resumed run skip whatever arrived
        in between; the consumer's position pins it down.
        """
        (pos,) = self._consumer.position([self._tp])
        if pos.offset >= 0:
            self._offset = pos.offset
