"""Labels under another field name: `FRAUD_LABEL_FIELD` for a team's own history.

The wire format's label is `label` (0, 1 or null), checked by parsing. A team's
files often call it something else (`is_fraud`, `chargeback`). With
`FRAUD_LABEL_FIELD` set to that name, the labels of parsed events are read from
that field of their original bytes instead: 0/1 or false/true; anything else,
or no such field, is "no label". The event itself is unchanged, and so is every
dead letter (it keeps the original bytes).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import numpy.typing as npt
import orjson

from bytewax_fraud.records import NO_LABEL, EventBatch

_VALUES = {b"0": 0, b"1": 1, b"false": 0, b"true": 1}


def _pattern(field: str) -> re.Pattern[bytes]:
    name = re.escape(orjson.dumps(field))
    return re.compile(name + rb"\s*:\s*(0|1|true|false)\s*[,}]")


def label_of(value: bytes | None, field: str, pattern: re.Pattern[bytes] | None = None) -> int:
    """The 0/1 label in `field` of one JSON object's bytes, or NO_LABEL."""
    if not value:
        return NO_LABEL
    quoted = orjson.dumps(field)
    if value.count(quoted) == 1:
        m = (pattern or _pattern(field)).search(value)
        if m is not None:
            return _VALUES[m.group(1)]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return NO_LABEL
    x = doc.get(field) if isinstance(doc, dict) else None
    if isinstance(x, bool):
        return int(x)
    return x if isinstance(x, int) and x in (0, 1) else NO_LABEL


def labels_from(values: list[bytes | None], field: str) -> npt.NDArray[np.int8]:
    """`label_of` each value, as the label column of a batch."""
    pattern = _pattern(field)
    return np.fromiter((label_of(v, field, pattern) for v in values), np.int8, len(values))


def relabel(events: EventBatch, field: str) -> EventBatch:
    """The batch with its labels read from `field` (unchanged where the bytes are not kept)."""
    if field == "label" or events.values is None:
        return events
    return dataclasses.replace(events, labels=labels_from(events.values, field))
