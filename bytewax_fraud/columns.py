"""Validated events as columns: what flows from parsing into scoring.

A source batch of one partition becomes one `EventBatch`, not one object per
event: the scorer works on columns (numpy arrays for numbers, lists for ids), so
the per-event Python work is a few list operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from bytewax_fraud.parse import Event

NO_LABEL = -1


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid transactions of one partition, in offset order, as columns.

    Attributes:
        partition: Source partition (= state partition).
        offsets: Offset of each event within the partition.
        ingest_ns: `time.time_ns()` when each event entered the pipeline.
        transaction_ids: The events' transaction ids.
        user_ids: The events' user ids.
        amounts: The amounts.
        timestamps: Event times, epoch seconds.
        merchants: The merchant ids.
        labels: 0 or 1, or `NO_LABEL` where the event had none.
        source: Where the events came from (a Kafka topic, or the generator's name).
        values: The original message bytes (None: not kept); for dead letters of
            events rejected after parsing.
        keys: The original message keys (None: the source has none).
        source_ts: The source's timestamp of each record, epoch s, NaN where it
            had none (None: the source has none). The reference of event-time checks.
    """

    partition: int
    offsets: npt.NDArray[np.int64]
    ingest_ns: npt.NDArray[np.int64]
    transaction_ids: list[str]
    user_ids: list[str]
    amounts: npt.NDArray[np.float64]
    timestamps: npt.NDArray[np.float64]
    merchants: list[str]
    labels: npt.NDArray[np.int8]
    source: str = ""
    values: list[bytes | None] | None = None
    keys: list[bytes | None] | None = None
    source_ts: npt.NDArray[np.float64] | None = None

    def __len__(self) -> int:
        return len(self.user_ids)

    @classmethod
    def from_rows(
        cls,
        partition: int,
        offsets: npt.NDArray[np.int64],
        ingest_ns: npt.NDArray[np.int64],
        rows: Sequence[dict[str, Any]],
        source: str = "",
        values: list[bytes | None] | None = None,
        keys: list[bytes | None] | None = None,
        source_ts: npt.NDArray[np.float64] | None = None,
    ) -> EventBatch:
        """Columns of validated transaction dicts (the fields of `Transaction`)."""
        n = len(rows)
        labels = [r["label"] for r in rows]
        return cls(
            partition=partition,
            offsets=offsets,
            ingest_ns=ingest_ns,
            transaction_ids=[r["transaction_id"] for r in rows],
            user_ids=[r["user_id"] for r in rows],
            amounts=np.fromiter([r["amount"] for r in rows], np.float64, n),
            timestamps=np.fromiter([r["timestamp"] for r in rows], np.float64, n),
            merchants=[r["merchant"] for r in rows],
            labels=(
                np.fromiter(labels, np.int8, n)
                if None not in labels
                else np.fromiter([NO_LABEL if x is None else x for x in labels], np.int8, n)
            ),
            source=source,
            values=values,
            keys=keys,
            source_ts=source_ts,
        )

    @classmethod
    def from_events(cls, events: Sequence[Event]) -> EventBatch:
        """Columns of per-event objects (all of one partition)."""
        if not events:
            raise ValueError("an EventBatch needs at least one event")
        n = len(events)
        return cls.from_rows(
            events[0].partition,
            np.fromiter([ev.offset for ev in events], np.int64, n),
            np.fromiter([ev.ingest_ns for ev in events], np.int64, n),
            [ev.tx.__dict__ for ev in events],
            values=[ev.tx.model_dump_json().encode() for ev in events],
        )

    def take(self, idx: npt.NDArray[np.intp]) -> EventBatch:
        """The events at these positions, in the given order."""
        at = idx.tolist()
        return EventBatch(
            partition=self.partition,
            offsets=self.offsets[idx],
            ingest_ns=self.ingest_ns[idx],
            transaction_ids=[self.transaction_ids[i] for i in at],
            user_ids=[self.user_ids[i] for i in at],
            amounts=self.amounts[idx],
            timestamps=self.timestamps[idx],
            merchants=[self.merchants[i] for i in at],
            labels=self.labels[idx],
            source=self.source,
            values=None if self.values is None else [self.values[i] for i in at],
            keys=None if self.keys is None else [self.keys[i] for i in at],
            source_ts=None if self.source_ts is None else self.source_ts[idx],
        )

    def slice(self, lo: int, hi: int) -> EventBatch:
        """The events lo..hi-1."""
        return EventBatch(
            partition=self.partition,
            offsets=self.offsets[lo:hi],
            ingest_ns=self.ingest_ns[lo:hi],
            transaction_ids=self.transaction_ids[lo:hi],
            user_ids=self.user_ids[lo:hi],
            amounts=self.amounts[lo:hi],
            timestamps=self.timestamps[lo:hi],
            merchants=self.merchants[lo:hi],
            labels=self.labels[lo:hi],
            source=self.source,
            values=None if self.values is None else self.values[lo:hi],
            keys=None if self.keys is None else self.keys[lo:hi],
            source_ts=None if self.source_ts is None else self.source_ts[lo:hi],
        )

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """Batches of one partition, one after the other."""
        if len(batches) == 1:
            return batches[0]
        return EventBatch(
            partition=batches[0].partition,
            offsets=np.concatenate([b.offsets for b in batches]),
            ingest_ns=np.concatenate([b.ingest_ns for b in batches]),
            transaction_ids=[x for b in batches for x in b.transaction_ids],
            user_ids=[x for b in batches for x in b.user_ids],
            amounts=np.concatenate([b.amounts for b in batches]),
            timestamps=np.concatenate([b.timestamps for b in batches]),
            merchants=[x for b in batches for x in b.merchants],
            labels=np.concatenate([b.labels for b in batches]),
            source=batches[0].source,
            values=_joined([b.values for b in batches], [len(b) for b in batches]),
            keys=_joined([b.keys for b in batches], [len(b) for b in batches]),
            source_ts=(
                None
                if all(b.source_ts is None for b in batches)
                else np.concatenate(
                    [
                        np.full(len(b), np.nan) if b.source_ts is None else b.source_ts
                        for b in batches
                    ]
                )
            ),
        )


def _joined(parts: list[list[bytes | None] | None], sizes: list[int]) -> list[bytes | None] | None:
    """Optional columns one after the other (None only if every part is None)."""
    if all(p is None for p in parts):
        return None
    return [
        x for p, n in zip(parts, sizes, strict=True) for x in (p if p is not None else [None] * n)
    ]
