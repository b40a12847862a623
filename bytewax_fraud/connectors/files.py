"""Where predictions and dead letters go: JSON Lines files or stdout."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from pathlib import Path

from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from bytewax_fraud.errors import OutputError


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


def _output_error(path: Path, exc: OSError) -> OutputError:
    what = "the volume is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
    return OutputError(
        f"cannot write {path}: {what}. Fix: free space on (or repair) the volume holding"
        f" FRAUD_OUTPUT_DIR ({path.parent}), then restart: the job resumes from its last"
        " snapshot and the file is cut back to it"
    )


class _JsonLinesPartition(StatefulSinkPartition[bytes, int]):
    def __init__(self, path: Path, resume_state: int | None) -> None:
        self._path = path
        self._f = open(path, "ab")  # noqa: SIM115 - lives as long as the partition
        self._f.truncate(resume_state or 0)
        self._f.seek(0, os.SEEK_END)

    def write_batch(self, items: list[bytes]) -> None:
        try:
            self._f.write(b"".join(items))
            self._f.flush()
        except OSError as exc:
            raise _output_error(self._path, exc) from exc

    def snapshot(self) -> int:
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as exc:
            raise _output_error(self._path, exc) from exc
        return self._f.tell()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a failed write was already reported
            self._f.close()


class StdoutSink(DynamicSink[bytes]):
    """Write blobs of JSON lines to standard output."""

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StdoutPartition:
        return _StdoutPartition()


class _StdoutPartition(StatelessSinkPartition[bytes]):
    def write_batch(self, items: list[bytes]) -> None:
        sys.stdout.buffer.write(b"".join(items))
        sys.stdout.buffer.flush()
