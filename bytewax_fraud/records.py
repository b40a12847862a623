"""What crosses the wire: transactions in, predictions and dead letters out.

These pydantic models are the schema. The hot path builds prediction and
dead-letter JSON directly (see `predictions.py`), and tests validate that output
against these models, so the two cannot drift apart.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Literal

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
