"""The records that flow between the stages, in one place.

What crosses the wire is a pydantic model: `Transaction` in, `Prediction` and
`DeadLetter` out. The hot path builds prediction and dead-letter JSON directly
(`scoring.py`, `dead_letter_json`), and tests validate that output against
these models, so the two cannot drift apart.

Inside the pipeline records are frozen dataclasses: a source emits `RawBatch`
(columns of one partition's messages) or single `RawMessage`s; parsing turns
them into `EventBatch` columns (or `Event`s, one per message, for tests and
custom sources); scoring returns a `ScoredBatch`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

#: Events outside [2000-01-01, 2100-01-01) are rejected as "timestamp out of range".
MIN_TIMESTAMP = 946_684_800.0
MAX_TIMESTAMP = 4_102_444_800.0
#: Ids longer than this are rejected: they would bloat every state key.
MAX_ID_LENGTH = 128
#: Raw messages longer than this are rejected before JSON decoding.
MAX_MESSAGE_BYTES = 16_384
#: Largest accepted amount (in the event's currency).
MAX_AMOUNT = 1e9

Id = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH)]


class Transaction(BaseModel):
    """One card transaction, as producers send it (JSON object)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    transaction_id: Id
    user_id: Id
    amount: StrictFloat | StrictInt
    currency: Annotated[StrictStr, Field(pattern=r"^[A-Z]{3}$")]
    timestamp: float
    merchant: Id
    label: Literal[0, 1] | None = None

    @field_validator("amount")
    @classmethod
    def _amount_is_sane(cls, v: float) -> float:
        try:
            v = float(v)
        except OverflowError as exc:  # a JSON integer too big for a float
            raise ValueError(f"amount must be at most {MAX_AMOUNT:.0f}") from exc
        if not math.isfinite(v):
            raise ValueError("amount must be a finite number")
        if v < 0:
            raise ValueError("amount must not be negative")
        if v > MAX_AMOUNT:
            raise ValueError(f"amount must be at most {MAX_AMOUNT:.0f}")
        return v

    @field_validator("label", mode="before")
    @classmethod
    def _label_is_strict(cls, v: object) -> object:
        # Literal[0, 1] alone would coerce true -> 1 and 1.0 -> 1.
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError("label must be 0, 1 or null")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp_epoch_or_iso(cls, v: object) -> float:
        if isinstance(v, bool):
            raise ValueError("timestamp must be epoch seconds or an ISO-8601 string")
        if isinstance(v, int | float):
            try:
                ts = float(v)
            except OverflowError:  # a JSON integer too big for a float
                ts = math.inf
        elif isinstance(v, str):
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError as exc:
                raise ValueError("timestamp string is not ISO-8601") from exc
            if dt.tzinfo is None:
                raise ValueError("ISO-8601 timestamp needs a UTC offset (e.g. 'Z' or '+00:00')")
            ts = dt.timestamp()
        else:
            raise ValueError("timestamp must be epoch seconds or an ISO-8601 string")
        if not math.isfinite(ts) or not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
            raise ValueError("timestamp out of range (must be between 2000-01-01 and 2100-01-01)")
        return ts


class Origin(BaseModel):
    """Where a message came from: the source, its partition and offset."""

    model_config = ConfigDict(frozen=True)

    source: str
    partition: int
    offset: int
    timestamp: float | None = None


class DeadLetter(BaseModel):
    """An input that could not be processed, with everything needed to replay it."""

    model_config = ConfigDict(frozen=True)

    stage: str
    error_class: str
    reason: str
    origin: Origin
    key: str | None = None
    #: The original message bytes, base64-encoded (they may not be valid UTF-8).
    value_b64: str
    #: The original key bytes, base64-encoded (`key` is only their lossy UTF-8 reading).
    key_b64: str | None = None


#: Longest `DeadLetter.reason`; longer ones are cut with an ellipsis.
MAX_REASON_CHARS = 300


def dead_letter(
    stage: str, error_class: str, reason: str, origin: Origin, key: bytes | None, value: bytes
) -> DeadLetter:
    """The dead letter of one message: its original key and value bytes, the reason on one line.

    The reason is cut to `MAX_REASON_CHARS` (with an ellipsis), whatever an exception
    message held; the key is also kept as its lossy UTF-8 reading, for people.
    """
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return DeadLetter(
        stage=stage,
        error_class=error_class,
        reason=reason,
        origin=origin,
        key=None if key is None else key.decode("utf-8", errors="replace"),
        value_b64=base64.b64encode(value).decode("ascii"),
        key_b64=None if key is None else base64.b64encode(key).decode("ascii"),
    )


def dead_letter_json(dl: DeadLetter) -> bytes:
    """Serializes a dead letter as one compact JSON line, without the newline.

    Args:
        dl: The dead letter.

    Returns:
        UTF-8 JSON that `DeadLetter.model_validate_json` reads back unchanged.
    """
    return dl.__pydantic_serializer__.to_json(dl)


class Prediction(BaseModel):
    """A model's score for one transaction."""

    model_config = ConfigDict(frozen=True)

    transaction_id: str
    user_id: str
    probability: float
    model: str
    event_timestamp: float
    partition: int
    offset: int
    latency_ms: float
    label: int | None = None


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One message as a source delivers it, before any decoding.

    Attributes:
        value: The message body; None for a Kafka tombstone.
        key: The message key, if any.
        source: Where it came from (a Kafka topic, or the generator's name).
        partition: Source partition.
        offset: Offset within the partition.
        timestamp: The source's timestamp in epoch seconds, if it has one.
        ingest_ns: `time.time_ns()` when the source handed it to the pipeline.
    """

    value: bytes | None
    key: bytes | None
    source: str
    partition: int
    offset: int
    timestamp: float | None
    ingest_ns: int


@dataclass(frozen=True, slots=True)
class Event:
    """A validated transaction with the position it was read from.

    Attributes:
        tx: The transaction.
        partition: Source partition.
        offset: Offset within the partition.
        ingest_ns: `time.time_ns()` when the message entered the pipeline.
    """

    tx: Transaction
    partition: int
    offset: int
    ingest_ns: int


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Consecutive messages of one source partition, as a source delivers them.

    Attributes:
        source: Where they came from (a Kafka topic, or the generator's name).
        partition: Source partition.
        offsets: Offset of each message.
        values: Message bodies; None for a Kafka tombstone.
        keys: Message keys (None: no message has a key).
        timestamps: The source's timestamps in epoch seconds (None: the source has none).
        ingest_ns: `time.time_ns()` when the source handed the batch to the pipeline.
    """

    source: str
    partition: int
    offsets: npt.NDArray[np.int64]
    values: list[bytes | None]
    keys: list[bytes | None] | None
    timestamps: list[float | None] | None
    ingest_ns: int

    def __len__(self) -> int:
        return len(self.values)

    def message(self, i: int) -> RawMessage:
        """The i-th message on its own."""
        return RawMessage(
            self.values[i],
            None if self.keys is None else self.keys[i],
            self.source,
            self.partition,
            int(self.offsets[i]),
            None if self.timestamps is None else self.timestamps[i],
            self.ingest_ns,
        )

    @classmethod
    def of(cls, messages: Sequence[RawMessage]) -> RawBatch:
        """Messages of one partition and source as a batch."""
        first = messages[0]
        return cls(
            first.source,
            first.partition,
            np.fromiter([m.offset for m in messages], np.int64, len(messages)),
            [m.value for m in messages],
            [m.key for m in messages],
            [m.timestamp for m in messages],
            first.ingest_ns,
        )


NO_LABEL = -1


def _row(key: str, dtype: type | None = None) -> dict[str, Any]:
    """Field metadata of a column filled from the transactions' `key` (numpy `dtype`, or a list)."""
    return {"row": key, "dtype": dtype}


#: Fields of `EventBatch` shared by all its events rather than one value per event.
_SHARED = frozenset({"partition", "source"})


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid transactions of one partition, in offset order, as columns.

    Every field but `partition` and `source` is a column (a numpy array or a list, one
    entry per event); `take`, `slice` and `concat` go over `dataclasses.fields`, so a
    new column cannot be forgotten by one of them. Columns filled from the validated
    transactions name their field in their metadata (`from_rows`).

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
    transaction_ids: list[str] = field(metadata=_row("transaction_id"))
    user_ids: list[str] = field(metadata=_row("user_id"))
    amounts: npt.NDArray[np.float64] = field(metadata=_row("amount", np.float64))
    timestamps: npt.NDArray[np.float64] = field(metadata=_row("timestamp", np.float64))
    merchants: list[str] = field(metadata=_row("merchant"))
    labels: npt.NDArray[np.int8] = field(metadata=_row("label", np.int8))
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
        cols: dict[str, Any] = {}
        for f in fields(cls):
            key = f.metadata.get("row")
            if key is None:
                continue
            col = [r[key] for r in rows]
            if key == "label" and None in col:
                col = [NO_LABEL if x is None else x for x in col]
            dtype = f.metadata["dtype"]
            cols[f.name] = col if dtype is None else np.fromiter(col, dtype, n)
        return cls(
            partition=partition,
            offsets=offsets,
            ingest_ns=ingest_ns,
            source=source,
            values=values,
            keys=keys,
            source_ts=source_ts,
            **cols,
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

    def _columns(self) -> Iterator[tuple[str, Any]]:
        """(name, column) of every column, None for an optional one this batch lacks."""
        for f in fields(self):
            if f.name not in _SHARED:
                yield f.name, getattr(self, f.name)

    def _with(self, cols: dict[str, Any]) -> EventBatch:
        return EventBatch(partition=self.partition, source=self.source, **cols)

    def take(self, idx: npt.NDArray[np.intp]) -> EventBatch:
        """The events at these positions, in the given order."""
        at = idx.tolist()
        return self._with(
            {
                name: None
                if col is None
                else col[idx]
                if isinstance(col, np.ndarray)
                else [col[i] for i in at]
                for name, col in self._columns()
            }
        )

    def slice(self, lo: int, hi: int) -> EventBatch:
        """The events lo..hi-1."""
        return self._with(
            {name: None if col is None else col[lo:hi] for name, col in self._columns()}
        )

    @staticmethod
    def concat(batches: Sequence[EventBatch]) -> EventBatch:
        """Batches of one partition, one after the other.

        An optional column some batches lack is filled there: None for a list, NaN for
        an array; it stays None only if every batch lacks it.
        """
        if len(batches) == 1:
            return batches[0]
        sizes = [len(b) for b in batches]
        parts = [dict(b._columns()) for b in batches]
        cols: dict[str, Any] = {}
        for name in parts[0]:
            got = [p[name] for p in parts]
            present = [c for c in got if c is not None]
            if not present:
                cols[name] = None
            elif isinstance(present[0], np.ndarray):
                cols[name] = np.concatenate(
                    [
                        np.full(n, np.nan) if c is None else c
                        for c, n in zip(got, sizes, strict=True)
                    ]
                )
            else:
                cols[name] = [
                    x
                    for c, n in zip(got, sizes, strict=True)
                    for x in (c if c is not None else [None] * n)
                ]
        return batches[0]._with(cols)


@dataclass(frozen=True)
class ScoredBatch:
    """What one batch produced, in input order."""

    user_ids: list[str]
    lines: list[bytes]
    latencies_ms: np.ndarray
    probabilities: np.ndarray
    labels: np.ndarray  # -1 where the event had no label
    replayed: int
    expired: int
    inference_seconds: list[float] = field(default_factory=list)
    #: Probabilities of the events scored now (replays excluded), per model label.
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    #: The labels of those events (-1: none), aligned with `scores`.
    score_labels: dict[str, np.ndarray] = field(default_factory=dict)
    #: Valid events rejected by the event-time checks, in offset order.
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: Events scored although older than their user's last event (within the lateness).
    late_accepted: int = 0
    #: Model calls that took users' runs of more than one event (the sequence path).
    sequence_calls: int = 0
    #: The input offset of each line (what an exactly-once sink fences replays by).
    offsets: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
