"""Raw message bytes in, `Event` or `DeadLetter` out.

Two entry points with one meaning: `parse_message` turns one message into an
`Event` or a `DeadLetter`; `parse_batch` does the same for a source batch and
returns the valid events as columns (`EventBatch`). The batch path is the hot
path: a valid message costs one size check and one call into pydantic-core's JSON
validator with a schema that runs no Python (straight from bytes into a dict);
the duplicate-key guard is a handful of substring counts over the whole batch.
Whatever that fast schema does not accept goes through `parse_message`, so
`Transaction` alone decides what is valid and every rejection reads the same.
Bad input becomes a `DeadLetter` value; nothing here raises.

Stages and error classes (stable names; dashboards and replay tools key on them):

- ``decode``: ``EmptyMessage`` (null, empty or whitespace-only value),
  ``MessageTooLarge`` (checked before any decoding), ``InvalidUtf8``,
  ``InvalidJson`` (syntax, truncation, nesting deeper than pydantic-core's limit,
  a UTF-8 byte-order mark, numbers out of range), ``NotAnObject`` (an array,
  string, number, boolean or null at the top level), ``DuplicateKey``.
- ``validate``: ``ValidationError`` (the object does not match `Transaction`);
  any other exception out of the validators (a bug) is kept the same way, under
  its class name, so the message can be replayed once the bug is fixed.

Notes on pydantic-core's JSON parser, which decide some of the cases above:

- It accepts the non-standard literals ``NaN``, ``Infinity`` and ``-Infinity``,
  and ``1e999`` overflows to ``inf``; `Transaction` rejects non-finite amounts and
  timestamps, so these end up as ``ValidationError``.
- On a duplicate key the last value wins silently. Other parsers keep the first
  or fail, so such a message means different things to different consumers; it
  is rejected as ``DuplicateKey`` when a `Transaction` field is repeated
  (repeated unknown fields are ignored, like unknown fields themselves).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
from pydantic import Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from bytewax_fraud.records import (
    MAX_AMOUNT,
    MAX_ID_LENGTH,
    MAX_MESSAGE_BYTES,
    MAX_TIMESTAMP,
    MIN_TIMESTAMP,
    DeadLetter,
    Event,
    EventBatch,
    Origin,
    RawBatch,
    RawMessage,
    Transaction,
    dead_letter,
)

_FIELDS = frozenset(Transaction.model_fields)
#: The required fields' names as they appear quoted in JSON (the duplicate-key guard counts them).
_QUOTED_REQUIRED = tuple(
    f'"{name}"'.encode() for name, f in Transaction.model_fields.items() if f.is_required()
)
_N_REQUIRED = len(_QUOTED_REQUIRED)
_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_TYPE_NAMES: dict[type, str] = {
    list: "array",
    dict: "object",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}


_validate_json = Transaction.__pydantic_validator__.validate_json

_FastId = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_ID_LENGTH)]


class _FastTransaction(TypedDict):
    """The common shape of a valid `Transaction`, checked without Python callbacks.

    Stricter than `Transaction` (numbers only for the timestamp, an integer
    0/1 or null label); what it accepts `Transaction` accepts with the same
    values (tests check this on the bad-input corpus and on mutations). What it
    rejects is decided by `Transaction` itself.
    """

    transaction_id: _FastId
    user_id: _FastId
    amount: Annotated[float, Field(strict=True, ge=0.0, le=MAX_AMOUNT, allow_inf_nan=False)]
    currency: Annotated[str, Field(strict=True, pattern=r"^[A-Z]{3}$")]
    timestamp: Annotated[
        float, Field(strict=True, ge=MIN_TIMESTAMP, lt=MAX_TIMESTAMP, allow_inf_nan=False)
    ]
    merchant: _FastId
    label: Annotated[Annotated[int, Field(strict=True, ge=0, le=1)] | None, Field(default=None)]


_validate_fast = TypeAdapter(_FastTransaction).validator.validate_json


def parse_message(
    msg: RawMessage,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    reject_duplicate_keys: bool = True,
) -> Event | DeadLetter:
    """Turns one raw message into an `Event`, or into a `DeadLetter` saying why not.

    Args:
        msg: The message as the source delivered it.
        max_message_bytes: Longer values are rejected before they are decoded.
        reject_duplicate_keys: Reject objects that repeat a `Transaction` field.
            Costs about 1.5 us per valid message (a third of the total); turn
            off only for producers known to write each key once.

    Returns:
        An `Event` for a valid transaction, otherwise a `DeadLetter` that keeps
        the original bytes, key and origin. Never raises for any input.
    """
    value = msg.value
    if not value:
        return _dead(msg, "decode", "EmptyMessage", "message is empty (no value)")
    if len(value) > max_message_bytes:
        return _dead(
            msg,
            "decode",
            "MessageTooLarge",
            f"message is {len(value)} bytes, larger than the {max_message_bytes}-byte limit "
            "(raise FRAUD_MAX_MESSAGE_BYTES to accept it)",
        )
    try:
        tx = _validate_json(value)
    except ValidationError as exc:
        return _from_validation_error(msg, value, exc)
    except Exception as exc:  # a validator bug must not stop the job; the input is kept
        return _dead(msg, "validate", type(exc).__name__, f"unexpected error: {exc}")
    if reject_duplicate_keys and _may_repeat_a_field(value):
        repeated = _repeated_fields(value)
        if repeated:
            return _dead(
                msg,
                "decode",
                "DuplicateKey",
                f"{', '.join(repeated)}: key appears more than once "
                "(ambiguous: parsers disagree on which value wins)",
            )
    return Event(tx, msg.partition, msg.offset, msg.ingest_ns)


def parse_batch(
    raw: RawBatch,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    reject_duplicate_keys: bool = True,
) -> tuple[EventBatch | None, list[DeadLetter]]:
    """Turns a source batch into its valid events (as columns) and dead letters.

    Means exactly what `parse_message` on each message means; it is only faster.

    Args:
        raw: The batch as the source delivered it.
        max_message_bytes: Longer values are rejected before they are decoded.
        reject_duplicate_keys: As for `parse_message`.

    Returns:
        The valid events in offset order (None if there are none) and the
        dead letters, in offset order too. Never raises for any input.
    """
    values = raw.values
    rows: list[dict[str, Any]] = []
    good: list[int] = []
    slow: list[int] = []
    fast = _validate_fast
    for i, value in enumerate(values):
        if value and len(value) <= max_message_bytes:
            try:
                rows.append(fast(value))
                good.append(i)
                continue
            except Exception:  # noqa: BLE001 - the exact path below decides and explains
                pass
        slow.append(i)
    if reject_duplicate_keys and rows:
        _drop_repeated(values, rows, good, slow)
    dead: list[DeadLetter] = []
    if slow:
        # The exact path: rejections get their reasons; anything valid rejoins in order.
        rescued: list[tuple[int, dict[str, Any]]] = []
        for i in slow:
            result = parse_message(raw.message(i), max_message_bytes, reject_duplicate_keys)
            if isinstance(result, DeadLetter):
                dead.append(result)
            else:
                rescued.append((i, result.tx.__dict__))
        if rescued:
            merged = sorted([*zip(good, rows, strict=True), *rescued], key=lambda x: x[0])
            good = [i for i, _ in merged]
            rows = [r for _, r in merged]
        dead.sort(key=lambda d: d.origin.offset)
    if not rows:
        return None, dead
    whole = len(good) == len(values)
    offsets = raw.offsets if whole else raw.offsets[np.asarray(good, np.intp)]
    ingest = np.full(len(rows), raw.ingest_ns, np.int64)
    keys = raw.keys if raw.keys is None or whole else [raw.keys[i] for i in good]
    return (
        EventBatch.from_rows(
            raw.partition,
            offsets,
            ingest,
            rows,
            raw.source,
            values if whole else [values[i] for i in good],
            keys,
            _source_times(raw.timestamps if whole else [raw.timestamps[i] for i in good])
            if raw.timestamps is not None
            else None,
        ),
        dead,
    )


def _source_times(stamps: list[float | None]) -> npt.NDArray[np.float64]:
    """The source's timestamps as floats, NaN where a record had none."""
    if None in stamps:
        return np.array([np.nan if t is None else t for t in stamps], np.float64)
    return np.fromiter(stamps, np.float64, len(stamps))


def _drop_repeated(
    values: list[bytes | None], rows: list[dict[str, Any]], good: list[int], slow: list[int]
) -> None:
    """Move messages that may repeat a `Transaction` field from `good` to `slow` (in place).

    One pass over the batch proves the common case clean: every accepted message
    names each required field at least once, so the counts over the whole batch
    equal the number of messages only if no message repeats one; likewise a
    message with a label names "label" at least once. Otherwise the messages the
    cheap per-message guard flags go to `parse_message`, which decides exactly.
    """
    accepted = [values[i] for i in good]
    joined = b"\n".join(accepted)  # type: ignore[arg-type]
    n = len(accepted)
    labelled = n - [r["label"] for r in rows].count(None)
    if (
        b"\\u" not in joined
        and joined.count(b'"label"') == labelled
        and all(joined.count(name) == n for name in _QUOTED_REQUIRED)
    ):
        return
    keep = [j for j, value in enumerate(accepted) if not _may_repeat_a_field(value)]  # type: ignore[arg-type]
    if len(keep) == n:
        return
    kept = set(keep)
    slow.extend(good[j] for j in range(n) if j not in kept)
    slow.sort()
    rows[:] = [rows[j] for j in keep]
    good[:] = [good[j] for j in keep]


def split(results: Iterable[Event | DeadLetter]) -> tuple[list[Event], list[DeadLetter]]:
    """Separates parse results into events and dead letters, keeping their order.

    Args:
        results: Outputs of `parse_message`.

    Returns:
        The events and the dead letters.
    """
    events: list[Event] = []
    dead: list[DeadLetter] = []
    for r in results:
        if isinstance(r, Event):
            events.append(r)
        else:
            dead.append(r)
    return events, dead


def _may_repeat_a_field(value: bytes) -> bool:
    # Cheap, never misses: field names are plain ASCII, so a repeated field key
    # either contains a \u escape or makes one of these quoted names occur
    # twice. False alarms (a name used as a string value) go to the exact check.
    if b"\\u" in value:
        return True
    keys = sum(value.count(name) for name in _QUOTED_REQUIRED) + value.count(b'"label"')
    # Each required field occurs at least once (validation passed), the optional
    # label at most once unless repeated.
    return keys > _N_REQUIRED + (b'"label"' in value)


def _ignore(_: str) -> None:
    return None


def _repeated_fields(value: bytes) -> list[str]:
    """Lists `Transaction` fields that occur more than once as top-level keys."""
    try:
        # Numbers are skipped, not converted: a 5,000-digit integer would hit
        # Python's int-from-string limit.
        pairs = json.loads(
            value,
            object_pairs_hook=list,
            parse_int=_ignore,
            parse_float=_ignore,
            parse_constant=_ignore,
        )
    except (ValueError, RecursionError):
        return []  # pydantic-core already accepted it; nothing more to learn here
    seen: set[str] = set()
    repeated: list[str] = []
    for k, _ in pairs:
        if k in _FIELDS:
            if k in seen and k not in repeated:
                repeated.append(k)
            seen.add(k)
    return repeated


def _from_validation_error(msg: RawMessage, value: bytes, exc: ValidationError) -> DeadLetter:
    errors = exc.errors(include_url=False, include_context=False)
    first = errors[0]
    if first["type"] == "json_invalid":
        return _from_json_error(msg, value, first["msg"])
    if first["type"] == "model_type" and not first["loc"]:
        kind = _JSON_TYPE_NAMES.get(type(first["input"]), type(first["input"]).__name__)
        return _dead(msg, "decode", "NotAnObject", f"message is a JSON {kind}, not an object")
    problems: dict[str, str] = {}
    for e in errors:
        # A union (amount: float | int) reports one error per branch; keep the first.
        field = str(e["loc"][0]) if e["loc"] else "message"
        if field not in problems:
            problems[field] = _describe(e["type"], e["msg"], e.get("input"))
    reason = "; ".join(f"{field}: {problem}" for field, problem in problems.items())
    return _dead(msg, "validate", "ValidationError", reason)


def _from_json_error(msg: RawMessage, value: bytes, detail: str) -> DeadLetter:
    if not value.strip():
        return _dead(msg, "decode", "EmptyMessage", "message is empty (only whitespace)")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as err:
        return _dead(
            msg,
            "decode",
            "InvalidUtf8",
            f"message is not valid UTF-8: byte 0x{value[err.start]:02x} at offset {err.start}",
        )
    if value.startswith(_UTF8_BOM):
        return _dead(
            msg,
            "decode",
            "InvalidJson",
            "message starts with a UTF-8 byte-order mark; send JSON without it",
        )
    return _dead(msg, "decode", "InvalidJson", detail)


def _describe(error_type: str, text: str, value: object) -> str:
    text = text.removeprefix("Value error, ")
    if text[1:2].islower():  # "Field required" -> "field required", but keep "ISO-8601"
        text = text[:1].lower() + text[1:]
    if error_type.endswith("_type") or error_type == "literal_error":
        # Name the JSON type only: the value itself may be long or sensitive.
        text += f" (got {_JSON_TYPE_NAMES.get(type(value), type(value).__name__)})"
    return text


def _dead(msg: RawMessage, stage: str, error_class: str, reason: str) -> DeadLetter:
    origin = Origin(
        source=msg.source, partition=msg.partition, offset=msg.offset, timestamp=msg.timestamp
    )
    return dead_letter(stage, error_class, reason, origin, msg.key, msg.value or b"")
