"""Where predictions and dead letters go: JSON Lines files or stdout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)


class JsonLinesSink(FixedPartitionedSink[bytes, int]):
    """Append blobs of JSON lines to one file, written by one worker.

    Items are `(key, blob)`; each blob is one or more complete lines. The
    resume state is the file length at the snapshot, and a resumed run
    truncates back to it, so the file holds every line exactly once.
    """

    def __init__(self, path: Path, fresh: bool = True) -> None:
        """Write to `path`; on a fresh start (new state) an old file there is emptied."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if fresh or not path.exists():
            path.write_bytes(b"")

    def list_parts(self) -> list[str]:
        return [self.path.name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _JsonLinesPartition:
        return _JsonLinesPartition(self.path, resume_state)


class _JsonLinesPartition(StatefulSinkPartition[bytes, int]):
    def __init__(self, path: Path, resume_state: int | None) -> None:
        self._f = open(path, "ab")  # noqa: SIM115 - lives as long as the partition
        self._f.truncate(resume_state or 0)
        self._f.seek(0, os.SEEK_END)

    def write_batch(self, items: list[bytes]) -> None:
        self._f.write(b"".join(items))
        self._f.flush()

    def snapshot(self) -> int:
        self._f.flush()
        os.fsync(self._f.fileno())
        return self._f.tell()

    def close(self) -> None:
        self._f.close()


class StdoutSink(DynamicSink[bytes]):
    """Write blobs of JSON lines to standard output."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StdoutPartition:
        return _StdoutPartition()


class _StdoutPartition(StatelessSinkPartition[bytes]):
    def write_batch(self, items: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(items))
        sys.stdout.buffer.flush()
