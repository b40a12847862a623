"""Records between stages: batches keep their columns aligned through take/slice/concat."""

from __future__ import annotations

import numpy as np

from bytewax_fraud.records import NO_LABEL, Event, EventBatch, RawBatch, RawMessage, Transaction


def _events(n: int) -> list[Event]:
    return [
        Event(
            Transaction(
                transaction_id=f"t{i}",
                user_id=f"u{i % 3}",
                amount=float(i),
                currency="EUR",
                timestamp=1.7e9 + i,
                merchant=f"m{i}",
                label=None if i % 2 else i % 4 // 2,
            ),
            partition=2,
            offset=10 + i,
            ingest_ns=i,
        )
        for i in range(6)
    ]


def test_event_batch_columns_stay_aligned() -> None:
    batch = EventBatch.from_events(_events(6))
    assert len(batch) == 6 and batch.partition == 2
    assert batch.labels.tolist() == [0, NO_LABEL, 1, NO_LABEL, 0, NO_LABEL]
    picked = batch.take(np.array([4, 1], np.intp))
    assert picked.transaction_ids == ["t4", "t1"] and picked.offsets.tolist() == [14, 11]
    assert picked.amounts.tolist() == [4.0, 1.0] and picked.merchants == ["m4", "m1"]
    again = EventBatch.concat([batch.slice(0, 2), batch.slice(2, 6)])
    for name in ("offsets", "ingest_ns", "amounts", "timestamps", "labels"):
        assert np.array_equal(getattr(again, name), getattr(batch, name)), name
    assert again.user_ids == batch.user_ids and again.transaction_ids == batch.transaction_ids


def test_raw_batch_round_trips_messages() -> None:
    msgs = [RawMessage(b"{}", b"k%d" % i, "tx", 1, 5 + i, 1.5, 7) for i in range(3)]
    batch = RawBatch.of(msgs)
    assert len(batch) == 3
    assert [batch.message(i) for i in range(3)] == msgs
