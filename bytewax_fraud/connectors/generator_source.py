"""The built-in generator as a Bytewax source: one input partition per state partition.

Each input partition generates only its own users (same hash as the state
partitions), at an optional offered rate, in batches bounded by size and a
deadline. Its resume state is the next offset to generate, so a resumed run
continues the same deterministic stream. A graceful stop (`shutdown`) ends every
partition at its next offset, so the next run continues from there.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_fraud.connectors.batching import DeadlineBatcher
from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.partitioning import partition_of_routing_key, routing_key
from bytewax_fraud.process import shutdown
from bytewax_fraud.records import RawBatch
from bytewax_fraud.status import STATS


def partition_quota(total: int | None, partitions: int, partition: int) -> int | None:
    """This partition's share of a bounded run of `total` events (None: unbounded)."""
    if total is None:
        return None
    return total // partitions + (1 if partition < total % partitions else 0)


@dataclass(frozen=True)
class GeneratorSource(FixedPartitionedSource[RawBatch, int]):
    """Generated transactions, partitioned like the state."""

    users: int
    seed: int
    partitions: int
    events: int | None = None
    rate: float = 0.0
    batch_max: int = 1024
    batch_timeout_s: float = 0.02
    clock: Callable[[], float] = time.monotonic

    def list_parts(self) -> list[str]:
        return [routing_key(p) for p in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[RawBatch, int]:
        p = partition_of_routing_key(for_part)
        gen = TransactionGenerator(
            users=self.users, seed=self.seed, partition_count=self.partitions, partition_index=p
        )
        quota = partition_quota(self.events, self.partitions, p)
        return _GeneratorPartition(
            gen,
            p,
            resume_state or 0,
            quota,
            self.rate / self.partitions,
            DeadlineBatcher(self.batch_max, self.batch_timeout_s, self.clock),
            self.clock,
        )


class _GeneratorPartition(StatefulSourcePartition[RawBatch, int]):
    def __init__(
        self,
        gen: TransactionGenerator,
        partition: int,
        start: int,
        quota: int | None,
        rate: float,
        batcher: DeadlineBatcher,
        clock: Callable[[], float],
    ) -> None:
        self._events: Iterator[bytes] = gen.events(start)
        #: A partition without users (more partitions than users) has nothing to emit.
        self._empty = gen.user_indices.shape[0] == 0
        self._partition = partition
        self._start = start
        self._offset = start
        self._quota = quota
        self._rate = rate
        self._batcher = batcher
        self._clock = clock
        self._t0 = clock()

    def _pending(self) -> int:
        left = self._batcher.batch_max if self._quota is None else self._quota - self._offset
        if self._rate <= 0:
            return min(left, self._batcher.batch_max)
        due = int((self._clock() - self._t0) * self._rate) - (self._offset - self._start)
        return min(left, due)

    def _end(self) -> int:
        """One past the last event available now: the quota, or what the rate has made due."""
        if self._rate > 0:
            due = self._start + int((self._clock() - self._t0) * self._rate)
            return due if self._quota is None else min(due, self._quota)
        return self._offset if self._quota is None else self._quota

    def next_batch(self) -> list[RawBatch]:
        if self._empty or (self._quota is not None and self._offset >= self._quota):
            raise StopIteration()
        if shutdown.requested():  # the snapshot stays the next offset: a resume continues
            raise StopIteration()
        n = self._pending()
        if self._rate > 0:
            n = self._batcher.take(n)
        if n <= 0:
            STATS.record_input(self._partition, self._offset, self._end())
            return []
        values: list[bytes | None] = list(itertools.islice(self._events, n))
        o = self._offset
        self._offset += len(values)
        STATS.record_input(self._partition, self._offset, self._end())
        offsets = np.arange(o, self._offset, dtype=np.int64)
        return [RawBatch("generator", self._partition, offsets, values, None, None, time.time_ns())]

    def next_awake(self) -> datetime | None:
        if self._rate <= 0:
            return None
        deadline = self._batcher.deadline()
        # Next event due (or the batch deadline), as a wall-clock time for bytewax.
        next_due = self._t0 + (self._offset - self._start + 1) / self._rate
        wake = next_due if deadline is None else min(deadline, next_due)
        delay = max(wake - self._clock(), 0.0)
        return datetime.now(UTC) + timedelta(seconds=delay)

    def snapshot(self) -> int:
        return self._offset
