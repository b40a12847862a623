"""A source wrapper that reports each epoch an input partition completes (the watchdog's signal).

Bytewax calls a partition's `snapshot()` when it advances the partition's epoch,
which it does only after the whole cluster finished the previous epoch; see
`process.progress` for why that makes a progress signal that idle input still
produces and a stalled cluster does not. Any `FixedPartitionedSource` can be
wrapped; items and snapshots pass through unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_fraud.process.progress import Progress

X = TypeVar("X")
S = TypeVar("S")


class EpochSignal(FixedPartitionedSource[X, S]):
    """`inner`, telling `progress` when each of its partitions is built, advances and ends."""

    def __init__(self, inner: FixedPartitionedSource[X, S], progress: Progress) -> None:
        """Wrap `inner`; report to `progress`."""
        self.inner = inner
        self.progress = progress

    def list_parts(self) -> list[str]:
        """The inner source's partitions."""
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: S | None
    ) -> _SignallingPartition[X, S]:
        """The inner partition; from now on this process is watched."""
        part = self.inner.build_part(step_id, for_part, resume_state)
        self.progress.opened()
        return _SignallingPartition(part, self.progress)


class _SignallingPartition(StatefulSourcePartition[X, S]):
    def __init__(self, inner: StatefulSourcePartition[X, S], progress: Progress) -> None:
        self._inner = inner
        self._progress = progress
        self._ended = False

    def next_batch(self) -> Any:
        try:
            return self._inner.next_batch()
        except StopIteration:
            self._end()
            raise

    def next_awake(self) -> datetime | None:
        return self._inner.next_awake()

    def snapshot(self) -> S:
        state = self._inner.snapshot()
        self._progress.epoch_completed()
        return state

    def close(self) -> None:
        self._end()
        self._inner.close()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._progress.ended()
