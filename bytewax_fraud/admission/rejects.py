"""Dead letters for valid events that are rejected after parsing (routing, event time).

They keep what a parse-stage dead letter keeps: the original bytes and key, the
origin (source, partition, offset, source timestamp), plus the stage, the error
class and a one-line reason.
"""

from __future__ import annotations

import json
import math

from bytewax_fraud.records import NO_LABEL, DeadLetter, EventBatch, Origin, dead_letter


def original_value(batch: EventBatch, i: int) -> bytes:
    """The message bytes of event `i` (its fields as JSON when the batch was built without them)."""
    if batch.values is not None:
        value = batch.values[i]
        if value is not None:
            return value
    label = int(batch.labels[i])
    return json.dumps(
        {
            "transaction_id": batch.transaction_ids[i],
            "user_id": batch.user_ids[i],
            "amount": float(batch.amounts[i]),
            "timestamp": float(batch.timestamps[i]),
            "merchant": batch.merchants[i],
            "label": None if label == NO_LABEL else label,
        }
    ).encode()


def reject(batch: EventBatch, i: int, stage: str, error_class: str, reason: str) -> DeadLetter:
    """The dead letter of event `i` of `batch`."""
    ts = None if batch.source_ts is None else float(batch.source_ts[i])
    origin = Origin(
        source=batch.source,
        partition=batch.partition,
        offset=int(batch.offsets[i]),
        timestamp=None if ts is None or math.isnan(ts) else ts,
    )
    key = None if batch.keys is None else batch.keys[i]
    return dead_letter(stage, error_class, reason, origin, key, original_value(batch, i))
