"""`parse_batch` means exactly what `parse_message` means on each message.

The batch path validates with a schema that runs no Python and checks duplicate
keys over the whole batch at once; whatever it does not accept goes through
`parse_message`. These tests hold it to the per-message path on the bad-input
corpus, on mutations of a valid message, and on batches that mix the two.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.parse import parse_batch, parse_message
from bytewax_fraud.records import NO_LABEL, DeadLetter, Event, EventBatch, RawBatch, RawMessage

_VALID: dict[str, Any] = {
    "transaction_id": "t-1",
    "user_id": "u-1",
    "amount": 12.5,
    "currency": "USD",
    "timestamp": 1_700_000_000.25,
    "merchant": "m-1",
    "label": 1,
}

#: Literal JSON values tried in every field: types, bounds, and the spellings a
#: lenient parser might coerce.
_VALUES = [
    "0", "1", "-0.0", "1.0", "true", "false", "null", '"1"', '""', '"USD"', '"usd"',
    "12", "12.5", "1e9", "1000000000.5", "-1", "1e999", "NaN", "Infinity", "-Infinity",
    "10000000000000000000000000000", "946684800", "946684799.9", "4102444800",
    '"2024-01-01T00:00:00Z"', '"2024-01-01T00:00:00"', '"not a date"', "[]", "{}",
    '"' + "x" * 128 + '"', '"' + "x" * 129 + '"', '"\\u0075-1"',
]  # fmt: skip


def _message(fields: dict[str, Any], **raw: str) -> bytes:
    """Compact JSON of `fields`, with some fields' values written as literal JSON."""
    text = json.dumps({**fields, **{k: "@" + k for k in raw}}, separators=(",", ":"))
    for k, v in raw.items():
        text = text.replace(f'"@{k}"', v)
    return text.encode()


def _mutations() -> list[bytes]:
    out = [_message(_VALID)]
    for field in _VALID:
        out += [_message(_VALID, **{field: v}) for v in _VALUES]
        out.append(_message({k: v for k, v in _VALID.items() if k != field}))
    text = _message(_VALID).decode()
    out += [
        (text[:-1] + ',"amount":3}').encode(),  # a repeated field
        (text[:-1] + ',"label":0}').encode(),
        (text[:-1] + ',"\\u0061mount":3}').encode(),  # repeated, spelt with an escape
        (text[:-1] + ',"note":"\\"label\\""}').encode(),  # "label" as a value, not a key
        (text[:-1] + ',"extra":{"user_id":1}}').encode(),  # a nested name, not repeated
        text.replace('"label":1', '"label":null').encode(),
        b"", b" ", b"[]", b"{", text.encode() + b"x", b"\xff" + text.encode(),
    ]  # fmt: skip
    return out


def _batch(values: list[bytes | None], partition: int = 2, first: int = 100) -> RawBatch:
    offsets = np.arange(first, first + len(values), dtype=np.int64)
    keys: list[bytes | None] = [f"k{i}".encode() for i in range(len(values))]
    stamps: list[float | None] = [1.5 * i for i in range(len(values))]
    return RawBatch("topic", partition, offsets, values, keys, stamps, 42)


def _expected(raw: RawBatch) -> tuple[list[Event], list[DeadLetter]]:
    results = [parse_message(raw.message(i)) for i in range(len(raw))]
    return (
        [r for r in results if isinstance(r, Event)],
        [r for r in results if isinstance(r, DeadLetter)],
    )


def _assert_same_events(got: EventBatch | None, events: list[Event]) -> None:
    if not events:
        assert got is None
        return
    assert got is not None
    want = EventBatch.from_events(events)
    assert got.partition == want.partition
    assert got.offsets.tolist() == want.offsets.tolist()
    assert got.ingest_ns.tolist() == want.ingest_ns.tolist()
    assert got.transaction_ids == want.transaction_ids
    assert got.user_ids == want.user_ids
    assert got.merchants == want.merchants
    # Bit-identical numbers (-0.0 and 0.0 differ here), and the same label.
    assert got.amounts.tobytes() == want.amounts.tobytes()
    assert got.timestamps.tobytes() == want.timestamps.tobytes()
    assert got.labels.tolist() == want.labels.tolist()


@pytest.mark.parametrize("value", _mutations(), ids=lambda v: v[:60].decode("utf-8", "replace"))
def test_each_mutation_alone_reads_as_parse_message_reads_it(value: bytes) -> None:
    raw = _batch([value])
    events, dead = _expected(raw)
    got, got_dead = parse_batch(raw)
    _assert_same_events(got, events)
    assert got_dead == dead


def test_mixed_batches_keep_offsets_order_and_reasons(bad_corpus: list[dict[str, Any]]) -> None:
    gen = TransactionGenerator(users=500, seed=3)
    it = gen.events()
    good = [next(it) for _ in range(400)]
    bad = [case["value"] for case in bad_corpus] + _mutations()
    rng = random.Random(5)
    for _ in range(20):
        values: list[bytes | None] = rng.sample(good, 150) + rng.sample(bad, 25) + [None]
        rng.shuffle(values)
        raw = _batch(values, first=rng.randrange(10_000))
        events, dead = _expected(raw)
        got, got_dead = parse_batch(raw)
        _assert_same_events(got, events)
        assert got_dead == dead
        assert got is not None and len(got) >= 150  # the generated ones at least
        assert len(dead) >= 1  # the None at least


def test_a_clean_batch_is_taken_whole() -> None:
    it = TransactionGenerator(users=50, seed=1).events()
    values: list[bytes | None] = [next(it) for _ in range(300)]
    raw = _batch(values)
    got, dead = parse_batch(raw)
    assert dead == []
    assert got is not None
    assert got.offsets.tolist() == raw.offsets.tolist()
    first = json.loads(values[0] or b"")
    assert (got.user_ids[0], got.amounts[0], got.labels[0]) == (
        first["user_id"],
        first["amount"],
        first["label"],
    )


def test_one_repeated_field_among_clean_messages_is_the_only_dead_letter() -> None:
    it = TransactionGenerator(users=50, seed=2).events()
    values: list[bytes | None] = [next(it) for _ in range(200)]
    dup = values[77]
    assert dup is not None
    values[77] = dup[:-1] + b',"user_id":"someone-else"}'
    values[120] = (values[120] or b"").replace(b'"label":0', b'"label":null')
    got, dead = parse_batch(_batch(values, first=0))
    assert [(d.error_class, d.origin.offset) for d in dead] == [("DuplicateKey", 77)]
    assert got is not None and len(got) == 199
    assert 77 not in got.offsets.tolist()
    assert got.labels[got.offsets.tolist().index(120)] == NO_LABEL


def test_a_raw_batch_message_round_trips() -> None:
    raw = _batch([b"{}", b"[]"], partition=7, first=9)
    msg = raw.message(1)
    assert msg == RawMessage(b"[]", b"k1", "topic", 7, 10, 1.5, 42)
    again = RawBatch.of([raw.message(0), msg])
    assert again.offsets.tolist() == [9, 10]
    assert again.values == raw.values and again.keys == raw.keys
