"""Testing only: the generator's stream with misbehaving events at fixed offsets, and its twin.

Recovery tests run the job as a real process and kill it; this source lets them
mix inputs that lie into that run (`TEST_FAULT_INPUTS_EVERY=N`, see fault_job.py): from offset
`FAULT_START` on, every N-th offset of a partition carries, in turn,

- an event of the partition's latest user stamped 50 years ahead (`TimestampTooFarAhead`),
- an event of that user 10 days older than its latest one (`TimestampTooLate`),
- an event of a user of another partition (`WrongPartition`).

The good events keep their offsets and contents. With `TEST_FAULT_INPUTS_TWIN=1`
the faulty offsets are left empty (offsets may have gaps, as in Kafka), which is
the clean twin: the same good events at the same offsets, so its predictions and
records must equal the faulty run's, byte for byte. Every record carries a source
timestamp: a good event's own time (a producer replaying recorded data), a
faulty one the time of the good event before it (a producer with a right clock
forwarding a device's wrong one).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_fraud.connectors.generator import TransactionGenerator, user_id
from bytewax_fraud.connectors.generator_source import partition_quota
from bytewax_fraud.partitioning import partition_for, partition_of_routing_key, routing_key
from bytewax_fraud.records import RawBatch

#: No fault before this offset: the partition clock (rank 100) is defined by then.
FAULT_START = 500
_YEARS_50 = 50 * 365.25 * 86400.0
_DAYS_10 = 10 * 86400.0


@dataclass(frozen=True)
class FaultPlan:
    """Where the faults go: every `every`-th offset from `FAULT_START` on."""

    every: int
    twin: bool = False

    def is_fault(self, offset: int) -> bool:
        """Whether `offset` carries a fault (or, in the twin, is left empty)."""
        return offset >= FAULT_START and offset % self.every == self.every - 1

    def faults_before(self, offset: int) -> int:
        """How many offsets below `offset` carry a fault."""
        return max(0, offset // self.every - FAULT_START // self.every)

    def kind(self, offset: int) -> str:
        """Which fault the offset carries: early, late or misrouted, in turn."""
        return ("early", "late", "misrouted")[(offset // self.every) % 3]


@dataclass(frozen=True)
class FaultyGeneratorSource(FixedPartitionedSource[RawBatch, int]):
    """The generator's partitions (as `GeneratorSource` makes them) with the plan's faults."""

    users: int
    seed: int
    partitions: int
    events: int | None
    batch_max: int
    plan: FaultPlan

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
        return FaultyGeneratorPartition(gen, p, resume_state or 0, quota, self.batch_max, self.plan)


class FaultyGeneratorPartition(StatefulSourcePartition[RawBatch, int]):
    """One generator partition with faults (or gaps) at the plan's offsets; resumable."""

    def __init__(
        self,
        gen: TransactionGenerator,
        partition: int,
        start: int,
        quota: int | None,
        batch_max: int,
        plan: FaultPlan,
    ) -> None:
        self._partition = partition
        self._offset = start
        self._quota = quota
        self._batch_max = batch_max
        self._plan = plan
        self._stranger = _user_of_another_partition(gen)
        good = start - plan.faults_before(start)
        self._last: dict[str, Any] | None = None
        if good > 0:  # the good event before the resume point, for the next fault
            events = gen.events(good - 1)
            self._last = json.loads(next(events))
        else:
            events = gen.events(0)
        self._events = events
        self._empty = gen.user_indices.shape[0] == 0

    def next_batch(self) -> list[RawBatch]:
        if self._empty or (self._quota is not None and self._offset >= self._quota):
            raise StopIteration()
        end = self._offset + self._batch_max
        if self._quota is not None:
            end = min(end, self._quota)
        values: list[bytes | None] = []
        offsets: list[int] = []
        stamps: list[float | None] = []
        for o in range(self._offset, end):
            if self._plan.is_fault(o):
                if self._plan.twin or self._last is None:
                    continue
                value, stamp = self._fault(o, self._last)
            else:
                value = next(self._events)
                self._last = json.loads(value)
                stamp = float(self._last["timestamp"])
            values.append(value)
            offsets.append(o)
            stamps.append(stamp)
        self._offset = end
        if not values:
            return []
        return [
            RawBatch(
                "generator",
                self._partition,
                np.asarray(offsets, np.int64),
                values,
                None,
                stamps,
                time.time_ns(),
            )
        ]

    def _fault(self, offset: int, last: dict[str, Any]) -> tuple[bytes, float]:
        tx = dict(last, transaction_id=f"fault-{self._partition}-{offset}")
        kind = self._plan.kind(offset)
        if kind == "misrouted" and self._stranger is not None:
            tx["user_id"] = self._stranger
        elif kind == "late":
            tx["timestamp"] = last["timestamp"] - _DAYS_10
        else:
            tx["timestamp"] = last["timestamp"] + _YEARS_50
        return json.dumps(tx, separators=(",", ":")).encode(), float(last["timestamp"])

    def snapshot(self) -> int:
        return self._offset


def _user_of_another_partition(gen: TransactionGenerator) -> str | None:
    """A user of the population whose state partition is not this generator's."""
    for i in range(gen.users):
        uid = user_id(i)
        if partition_for(uid, gen.partition_count) != gen.partition_index:
            return uid
    return None
