"""Files of transactions as a Bytewax source: replay history through the same job.

There is one input partition per state partition, as for Kafka. Each reads the
files of `FRAUD_INPUT` in order (`file_input.py`) and keeps the lines of its
own users: those whose user id's murmur2 gives its partition, as Kafka's
default partitioner places a record keyed by the user id. A user therefore has
the same state partition in a file replay and in a Kafka run. (Every partition
reads every line: the price of a source that lines up with the state and the
control input partition by partition.) The user id is found in the raw line by
a pattern (a JSON decode only where the pattern is unsure); a line without one
belongs to partition 0, where parsing makes it a dead letter. Every line goes
through the same parse, validation and admission checks as a Kafka message,
so a line placed wrongly would be a `WrongPartition` dead letter, never lost.

The resume state is the position after the last line handed over (file, line,
byte) with the fingerprints of the files read, so a resumed run continues at
the next line and refuses files changed under it (`FileInputChanged`). The run
ends when the last file is read. Memory stays flat: one batch of lines at a
time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_fraud.connectors.file_input import (
    LINE_SPAN,
    InputFile,
    LineReader,
    Position,
    check_unchanged,
)
from bytewax_fraud.partitioning import partition_for, partition_of_routing_key, routing_key
from bytewax_fraud.process import shutdown
from bytewax_fraud.records import RawBatch

_USER_ID = re.compile(rb'"user_id"\s*:\s*"([^"\\]*)"')
_USER_KEY = b'"user_id"'


def user_id_of(line: bytes) -> str | None:
    """The top-level `user_id` string of a JSON line, or None if it has none (or is not JSON).

    The pattern serves lines that name `user_id` once with a plain string;
    others (escapes, nesting, repeats) are decoded.
    """
    if line.count(_USER_KEY) == 1:
        m = _USER_ID.search(line)
        if m is not None:
            try:
                return m.group(1).decode("utf-8")
            except UnicodeDecodeError:
                return None
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    uid = doc.get("user_id") if isinstance(doc, dict) else None
    return uid if isinstance(uid, str) else None


def lines_of_partition(
    numbers: list[int], values: list[bytes], partitions: int, partition: int
) -> tuple[list[int], list[bytes | None]]:
    """The lines (numbers and bytes) whose user belongs to `partition`, in file order.

    A line without a user id belongs to partition 0.
    """
    nums: list[int] = []
    vals: list[bytes | None] = []
    for n, v in zip(numbers, values, strict=True):
        uid = user_id_of(v)
        if (0 if uid is None else partition_for(uid, partitions)) == partition:
            nums.append(n)
            vals.append(v)
    return nums, vals


@dataclass(frozen=True)
class FileSource(FixedPartitionedSource[RawBatch, dict[str, Any]]):
    """The lines of `files`, in order; input partition p emits the lines of p's users.

    Attributes:
        files: The input files (`file_input.list_input`).
        partitions: State partitions (FRAUD_PARTITIONS).
        lines_per_read: Lines read per call; the partition's share of them is its batch.
        max_line_bytes: Longer lines are cut (and rejected by parsing as too long).
    """

    files: tuple[InputFile, ...]
    partitions: int
    lines_per_read: int = 4096
    max_line_bytes: int = 16_384

    def list_parts(self) -> list[str]:
        return [routing_key(p) for p in range(self.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> FilePartition:
        files = list(self.files)
        if resume_state is None:
            at = Position(0, 0, 0, [files[0].fingerprint()])
        else:
            at = Position.from_state(resume_state)
            check_unchanged(files, at)
        return FilePartition(
            files,
            at,
            self.partitions,
            partition_of_routing_key(for_part),
            self.lines_per_read,
            self.max_line_bytes,
        )


class FilePartition(StatefulSourcePartition[RawBatch, dict[str, Any]]):
    """Reads the files one after the other from a position, keeping one partition's lines."""

    def __init__(
        self,
        files: list[InputFile],
        at: Position,
        partitions: int,
        partition: int,
        lines_per_read: int,
        max_line_bytes: int,
    ) -> None:
        self._files = files
        self._read = [list(x) for x in at.read]
        self._partitions = partitions
        self._partition = partition
        self._n = lines_per_read
        self._max = max_line_bytes
        self._index = at.file
        self._reader: LineReader | None = None
        if self._index < len(files):
            if len(self._read) <= self._index:  # a file added after a finished run's last one
                self._read.append(files[self._index].fingerprint())
            self._reader = LineReader(files[self._index], at.pos, at.line, max_line_bytes)

    def next_batch(self) -> list[RawBatch]:
        reader = self._reader
        if reader is None or shutdown.requested():
            raise StopIteration()
        numbers, values = reader.read(self._n)
        base = self._index * LINE_SPAN
        if reader.at_end:
            self._next_file()
        nums, vals = lines_of_partition(numbers, values, self._partitions, self._partition)
        if not nums:
            return []
        offsets = np.asarray(nums, np.int64) + base
        return [RawBatch(reader.path, self._partition, offsets, vals, None, None, time.time_ns())]

    def _next_file(self) -> None:
        assert self._reader is not None
        self._reader.close()
        self._index += 1
        if self._index < len(self._files):
            f = self._files[self._index]
            self._read.append(f.fingerprint())
            self._reader = LineReader(f, 0, 0, self._max)
        else:
            self._reader = None

    def snapshot(self) -> dict[str, Any]:
        r = self._reader
        return Position(
            self._index,
            0 if r is None else r.line,
            0 if r is None else r.pos,
            self._read,
        ).to_state()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
