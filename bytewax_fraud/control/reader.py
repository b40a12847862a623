"""The control input, merged into every input partition of the data source.

Each data partition reads the whole control log itself and emits its commands
in its own stream, before the data it reads next. So every state partition sees
every command (broadcast), the position where a command takes effect is part of
that partition's ordered stream, commands already in the log at start apply
before the first event, and a bounded run ends when its data ends even though
the control log stays open.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from bytewax_fraud.control.commands import ControlMessage
from bytewax_fraud.partitioning import partition_of_routing_key


class ControlReader(Protocol):
    """Reads new control records; `position` resumes it."""

    position: int

    def poll(self) -> list[tuple[int, bytes]]:
        """New (seq, value) records since the last poll."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class FileControlReader:
    """Tails a JSON Lines file; a record's seq is its line number (from 0)."""

    def __init__(self, path: Path, position: int = 0, line: int = 0) -> None:
        self.path = path
        self.position = position  # byte offset of the next unread line
        self.line = line

    def poll(self) -> list[tuple[int, bytes]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.position)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []  # no complete line yet
        out = []
        for raw in data[: end + 1].split(b"\n")[:-1]:
            if raw.strip():
                out.append((self.line, raw.strip()))
            self.line += 1
        self.position += end + 1
        return out

    def close(self) -> None:
        pass


class WithControl(FixedPartitionedSource[Any, dict[str, Any]]):
    """Wraps a partitioned data source so each partition also emits the control records."""

    def __init__(
        self,
        inner: FixedPartitionedSource[Any, Any],
        reader: Callable[[dict[str, Any] | None], ControlReader],
        source_name: str,
        poll_interval: float = 0.5,
    ) -> None:
        self.inner = inner
        self.reader = reader
        self.source_name = source_name
        self.poll_interval = poll_interval

    def list_parts(self) -> list[str]:
        return self.inner.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _ControlledPartition:
        resume = resume_state or {}
        inner = self.inner.build_part(step_id, for_part, resume.get("data"))
        return _ControlledPartition(
            inner,
            self.reader(resume.get("control")),
            partition_of_routing_key(for_part),
            self.source_name,
            self.poll_interval,
        )


class _ControlledPartition(StatefulSourcePartition[Any, dict[str, Any]]):
    def __init__(
        self,
        inner: StatefulSourcePartition[Any, Any],
        reader: ControlReader,
        partition: int,
        source_name: str,
        poll_interval: float,
    ) -> None:
        self._inner = inner
        self._reader = reader
        self._partition = partition
        self._source = source_name
        self._interval = poll_interval
        self._next_poll = 0.0  # poll at once: commands already in the log go first

    def _control(self) -> Iterable[ControlMessage]:
        now = time.monotonic()
        if now < self._next_poll:
            return []
        self._next_poll = now + self._interval
        return [
            ControlMessage(self._partition, seq, value, self._source)
            for seq, value in self._reader.poll()
        ]

    def next_batch(self) -> list[Any]:
        # The data first: when it ends (StopIteration), no control record has been polled
        # and lost; the snapshot still holds the control position to resume from.
        data = list(self._inner.next_batch())
        return list(self._control()) + data

    def next_awake(self) -> datetime | None:
        inner = self._inner.next_awake()
        if inner is None:
            return None
        poll = datetime.now(UTC) + timedelta(seconds=max(self._next_poll - time.monotonic(), 0.0))
        return min(inner, poll)

    def snapshot(self) -> dict[str, Any]:
        return {"data": self._inner.snapshot(), "control": _reader_state(self._reader)}

    def close(self) -> None:
        self._reader.close()
        self._inner.close()


def _reader_state(reader: ControlReader) -> dict[str, Any]:
    state: dict[str, Any] = {"position": reader.position}
    if isinstance(reader, FileControlReader):
        state["line"] = reader.line
    return state


def file_reader(path: Path) -> Callable[[dict[str, Any] | None], ControlReader]:
    """A factory of file readers resuming from a snapshot."""

    def build(state: dict[str, Any] | None) -> ControlReader:
        state = state or {}
        return FileControlReader(path, int(state.get("position", 0)), int(state.get("line", 0)))

    return build


class NullControlReader:
    """No control input configured."""

    position = 0

    def poll(self) -> list[tuple[int, bytes]]:
        return []

    def close(self) -> None:
        pass


def null_reader(state: dict[str, Any] | None) -> ControlReader:
    """A reader of nothing (keeps the snapshot format the same with and without control)."""
    return NullControlReader()


class KafkaControlReader:
    """Reads partition 0 of the control topic; a record's seq is its offset.

    The first poll reads up to the end of the topic (waiting up to `catch_up_s`), so
    commands already on the topic when the job starts apply before the first event.
    """

    def __init__(
        self, config: dict[str, Any], topic: str, position: int, catch_up_s: float = 10.0
    ) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.position = position
        self._caught_up = False
        self._catch_up_s = catch_up_s
        self._consumer = Consumer({**config, "enable.partition.eof": True})
        self._consumer.assign([TopicPartition(topic, 0, position)])

    def poll(self) -> list[tuple[int, bytes]]:
        if self._caught_up:
            return self._take(self._consumer.consume(num_messages=500, timeout=0.0))
        out: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + self._catch_up_s
        while not self._caught_up and time.monotonic() < deadline:
            out += self._take(self._consumer.consume(num_messages=500, timeout=0.2))
        self._caught_up = True  # after the deadline too: a slow broker must not block data
        return out

    def _take(self, msgs: list[Any]) -> list[tuple[int, bytes]]:
        from confluent_kafka import KafkaError

        out = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._caught_up = True
                continue  # transient broker errors: librdkafka retries by itself
            offset = msg.offset()
            if offset is None or offset < self.position:
                continue
            out.append((offset, msg.value() or b""))
            self.position = offset + 1
        return out

    def close(self) -> None:
        self._consumer.close()


def kafka_reader(
    config: dict[str, Any], topic: str
) -> Callable[[dict[str, Any] | None], ControlReader]:
    """A factory of control-topic readers resuming from a snapshot."""

    def build(state: dict[str, Any] | None) -> ControlReader:
        return KafkaControlReader(config, topic, int((state or {}).get("position", 0)))

    return build
