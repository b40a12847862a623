"""The skew benchmark's inputs: the hot share it asks for, and a model that falls back to waves."""

from __future__ import annotations

import json
from pathlib import Path

from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.sequence import batch_shape
from bytewax_fraud.settings import DEFAULT_MODEL
from bytewax_fraud.tools.bench.skew import HOT_USER, format_report, hot_messages, model_for


def test_hot_messages_move_the_share_to_one_user_and_keep_event_time_order() -> None:
    even = hot_messages(500, 0, 4000, 0.0)
    hot = hot_messages(500, 0, 4000, 0.3)
    assert not any(k == HOT_USER for k, _ in even)
    moved = [json.loads(v) for k, v in hot if k == HOT_USER]
    assert 0.27 < len(moved) / 4000 < 0.33
    assert all(m["user_id"] == HOT_USER.decode() for m in moved)
    ts = [m["timestamp"] for m in moved]
    assert ts == sorted(ts)  # the hot user's events stay in time order: none is rejected
    assert [json.loads(v)["transaction_id"] for _, v in hot] == [
        json.loads(v)["transaction_id"] for _, v in even
    ]


def test_the_waves_mode_serves_the_same_file_without_its_sequence_form(tmp_path: Path) -> None:
    path = model_for("waves", DEFAULT_MODEL, tmp_path)
    assert path.read_bytes() == DEFAULT_MODEL.read_bytes()
    model = ModelLoader().load(path, model_id="bench-waves")
    assert not batch_shape(model).runs
    assert model_for("sequence", DEFAULT_MODEL, tmp_path) == DEFAULT_MODEL


def test_report_tables() -> None:
    report = {
        "kafka": [{"mode": "sequence", "share": 0.3, "events_per_s": 9000.0, "x_even": 0.9}],
        "embedded": [
            {
                "mode": "waves",
                "users": 1,
                "events_per_s": 1000.0,
                "p50_ms": 9.0,
                "x_many_users": 0.1,
            }
        ],
    }
    text = format_report(report)
    assert "| sequence | 30% | 9,000 | 0.90x |" in text
    assert "| waves | 1 | 1,000 | 9.0 | 0.10x |" in text
