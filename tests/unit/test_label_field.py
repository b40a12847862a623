"""FRAUD_LABEL_FIELD: labels read from another field of the original bytes."""

from __future__ import annotations

import numpy as np
import pytest

from bytewax_fraud.label_field import label_of, labels_from, relabel
from bytewax_fraud.parse import parse_batch
from bytewax_fraud.records import NO_LABEL, RawBatch

BASE = (
    b'{"transaction_id":"t","user_id":"u","amount":1,"currency":"EUR",'
    b'"timestamp":1700000000,"merchant":"m"'
)


@pytest.mark.parametrize(
    ("tail", "want"),
    [
        (b',"is_fraud":1}', 1),
        (b',"is_fraud" : 0 }', 0),
        (b',"is_fraud":true}', 1),
        (b',"is_fraud":false}', 0),
        (b',"is_fraud":null}', NO_LABEL),
        (b',"is_fraud":"1"}', NO_LABEL),
        (b',"is_fraud":2}', NO_LABEL),
        (b',"is_fraud":1.0}', NO_LABEL),
        (b"}", NO_LABEL),
        (b',"x":{"is_fraud":1},"is_fraud":0}', 0),
        (b',"note":"\\"is_fraud\\":1"}', NO_LABEL),
    ],
)
def test_label_of(tail: bytes, want: int) -> None:
    assert label_of(BASE + tail, "is_fraud") == want


def test_not_json_has_no_label() -> None:
    assert label_of(b"not json", "is_fraud") == NO_LABEL
    assert label_of(None, "is_fraud") == NO_LABEL


def test_relabel_replaces_the_parsed_labels_and_nothing_else() -> None:
    values: list[bytes | None] = [
        BASE + b',"label":0,"is_fraud":true}',
        BASE + b',"label":1}',
        BASE + b',"is_fraud":false}',
    ]
    raw = RawBatch("f", 0, np.arange(3, dtype=np.int64), values, None, None, 0)
    events, dead = parse_batch(raw)
    assert events is not None and not dead
    got = relabel(events, "is_fraud")
    assert got.labels.tolist() == [1, NO_LABEL, 0]
    assert got.user_ids == events.user_ids and got.values == events.values
    assert relabel(events, "label") is events
    assert labels_from(values, "is_fraud").dtype == np.int8
