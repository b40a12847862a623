"""Settings: names, precedence and errors that say the fix."""

from __future__ import annotations

import pytest

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.settings import load_settings, parse_duration, settings_help


def test_defaults() -> None:
    s = load_settings()
    assert s.events is None
    assert s.window == 10
    assert s.state_ttl == 30 * 86400
    assert s.device == "cpu"
    assert s.model.name == "fraud_gru.onnx"


def test_environment_then_explicit_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_WINDOW", "12")
    monkeypatch.setenv("FRAUD_STATE_TTL", "12h")
    monkeypatch.setenv("FRAUD_EVENTS", "1000")
    s = load_settings()
    assert (s.window, s.state_ttl, s.events) == (12, 12 * 3600, 1000)
    assert load_settings(window=20).window == 20


@pytest.mark.parametrize(
    ("env", "value", "needle"),
    [
        ("FRAUD_WINDOW", "abc", "FRAUD_WINDOW='abc'"),
        ("FRAUD_WINDOW", "1", "greater than or equal to 2"),
        ("FRAUD_DEVICE", "tpu", "expected cpu, cuda, cuda:N or auto"),
        ("FRAUD_STATE_TTL", "soon", "duration like 30d"),
        ("FRAUD_PARTITIONS", "0", "FRAUD_PARTITIONS"),
        ("FRAUD_MODEL", "/nonexistent/model.onnx", "no model file"),
        ("FRAUD_EVENTS", "-5", "FRAUD_EVENTS"),
    ],
)
def test_bad_values_fail_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value)
    assert "Fix: set " + env in str(err.value)


def test_durations() -> None:
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("90m") == 5400
    assert parse_duration(15) == 15
    with pytest.raises(ValueError):
        parse_duration("0s")


def test_help_lists_every_setting() -> None:
    text = settings_help()
    for name in (
        "FRAUD_EVENTS",
        "FRAUD_USERS",
        "FRAUD_SEED",
        "FRAUD_OUTPUT_DIR",
        "FRAUD_STATE_DIR",
        "FRAUD_MODEL",
        "FRAUD_DEVICE",
        "FRAUD_PARTITIONS",
        "FRAUD_WINDOW",
        "FRAUD_STATE_TTL",
        "FRAUD_BATCH_MAX",
        "FRAUD_BATCH_TIMEOUT_MS",
    ):
        assert name in text
