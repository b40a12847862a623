"""A partition's watermark offsets, asked of the broker on a thread of their own.

`Consumer.get_watermark_offsets` waits for the broker's answer (up to its
timeout). A Bytewax worker reads all its partitions in turn on one thread, so a
reader that waited there would hold up every partition of the worker. The
query runs on a short-lived daemon thread instead; the reader polls `result()`
between reads and reads nothing from that partition until the answer is in.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from confluent_kafka import Consumer, TopicPartition


class WatermarkQuery:
    """One `get_watermark_offsets(tp, timeout)` running in the background."""

    def __init__(self, consumer: Consumer, tp: TopicPartition, timeout_s: float) -> None:
        self._future: Future[tuple[int, int]] = Future()
        self._lock = threading.Lock()
        self._close_when_done: Consumer | None = None
        self._thread = threading.Thread(
            target=self._run,
            args=(consumer, tp, timeout_s),
            name=f"watermarks-{tp.topic}-{tp.partition}",
            daemon=True,
        )
        self._thread.start()

    def _run(self, consumer: Consumer, tp: TopicPartition, timeout_s: float) -> None:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
        except BaseException as exc:  # handed to the reader, which decides
            self._future.set_exception(exc)
        else:
            self._future.set_result((low, high))
        with self._lock:
            closing = self._close_when_done
        if closing is not None:
            closing.close()

    def result(self) -> tuple[int, int] | None:
        """(low, high) once the broker answered, None while waiting.

        Raises:
            KafkaException: The broker did not answer within the timeout, or refused.
        """
        if not self._future.done():
            return None
        return self._future.result()

    def close_consumer(self, consumer: Consumer) -> None:
        """Close `consumer` now, or when the query returns if it still uses it."""
        with self._lock:
            if not self._future.done():
                self._close_when_done = consumer
                return
        consumer.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the query's thread (tests)."""
        self._thread.join(timeout)
