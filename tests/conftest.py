"""Shared fixtures: the bad-input corpus, known-good events and a message factory."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import Broker, BrokerUnavailable, apache_kafka, wait_for_metadata

from bytewax_fraud.records import RawMessage

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
DATA = Path(__file__).parent / "data"
BAD_INPUTS = DATA / "bad_inputs.jsonl"

#: Valid messages and the `Transaction` fields each must parse to.
GOOD_EVENTS: list[dict[str, Any]] = [
    {
        "kind": "epoch-float-label-0",
        "value": b'{"transaction_id":"t-1","user_id":"u-1","amount":12.5,"currency":"USD",'
        b'"timestamp":1700000000.25,"merchant":"m-1","label":0}',
        "expected": {
            "transaction_id": "t-1",
            "user_id": "u-1",
            "amount": 12.5,
            "currency": "USD",
            "timestamp": 1700000000.25,
            "merchant": "m-1",
            "label": 0,
        },
    },
    {
        "kind": "epoch-int-int-amount-no-label",
        "value": b'{"transaction_id":"t-2","user_id":"u-2","amount":12,"currency":"EUR",'
        b'"timestamp":1700000000,"merchant":"m-2"}',
        "expected": {"amount": 12.0, "timestamp": 1700000000.0, "label": None},
    },
    {
        "kind": "iso-z-label-1",
        "value": b'{"transaction_id":"t-3","user_id":"u-3","amount":0,"currency":"GBP",'
        b'"timestamp":"2023-11-14T22:13:20Z","merchant":"m-3","label":1}',
        "expected": {"amount": 0.0, "timestamp": 1700000000.0, "label": 1},
    },
    {
        "kind": "iso-plus-0200-fraction",
        "value": b'{"transaction_id":"t-4","user_id":"u-4","amount":999999999.99,'
        b'"currency":"CHF","timestamp":"2023-11-15T00:13:20.5+02:00","merchant":"m-4"}',
        "expected": {"amount": 999999999.99, "timestamp": 1700000000.5},
    },
    {
        "kind": "extra-fields-label-null-pretty",
        "value": b'{\n  "transaction_id": "t-5",\n  "user_id": "u-5",\n  "amount": 1e2,\n'
        b'  "currency": "JPY",\n  "timestamp": 1.7e9,\n  "merchant": "m-5",\n'
        b'  "label": null,\n  "device": {"os": "ios", "tags": [1, 2, {"amount": 3}]},\n'
        b'  "note": "amount"\n}\n',
        "expected": {"amount": 100.0, "timestamp": 1.7e9, "label": None},
    },
    {
        "kind": "unicode-and-escapes",
        "value": '{"transaction_id":"t-6","user_id":"\\u00fcser","amount":3.25,"currency":"EUR",'
        '"timestamp":1700000000,"merchant":"Café ☕"}'.encode(),
        "expected": {"user_id": "üser", "merchant": "Café ☕"},
    },
]


def _load_bad_corpus() -> list[dict[str, Any]]:
    cases = []
    for line in BAD_INPUTS.read_text("utf-8").splitlines():
        if line.strip():
            case = json.loads(line)
            case["value"] = base64.b64decode(case["value_b64"], validate=True)
            cases.append(case)
    return cases


#: Stages of the cases that are bad wherever they arrive (parsing rejects them).
PARSE_STAGES = frozenset({"decode", "validate"})


@pytest.fixture(scope="session")
def bad_corpus() -> list[dict[str, Any]]:
    """Every kind of input that parsing rejects, from tests/data/bad_inputs.jsonl.

    Each item has ``kind``, ``value_b64``, ``value`` (the decoded raw bytes),
    ``stage`` and ``reason_contains``.
    """
    return [c for c in _load_bad_corpus() if c["stage"] in PARSE_STAGES]


@pytest.fixture(scope="session")
def context_corpus() -> list[dict[str, Any]]:
    """The corpus's valid events that lie about when or where they belong.

    Besides the fields of `bad_corpus` each has ``error_class`` and ``context``,
    where it is bad (see `test_parse.CONTEXTS`): ``source-clock`` (a source whose
    record timestamps are years before the event), ``partition-clock`` (once the
    partition clock is defined, after 2000) or ``key`` (produced keyed by
    ``key_b64``, murmur2, 4 partitions).
    """
    return [c for c in _load_bad_corpus() if c["stage"] not in PARSE_STAGES]


@pytest.fixture(scope="session")
def good_events() -> list[dict[str, Any]]:
    """Valid raw messages (``value``) with the fields they parse to (``expected``)."""
    return GOOD_EVENTS


@pytest.fixture
def raw_message() -> Callable[..., RawMessage]:
    """Builds a `RawMessage`; keyword arguments override the defaults."""

    def make(value: bytes | None, **overrides: Any) -> RawMessage:
        fields: dict[str, Any] = {
            "key": b"u-1",
            "source": "transactions",
            "partition": 3,
            "offset": 42,
            "timestamp": 1_700_000_000.5,
            "ingest_ns": 123_456_789,
        }
        fields.update(overrides)
        return RawMessage(value=value, **fields)

    return make


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Kafka broker for the whole session.

    The one named by KAFKA_BOOTSTRAP_SERVERS if set (outage and restart tests
    are then skipped), else one Apache Kafka node (KRaft, broker and controller)
    started here on free loopback ports, logging to its directory's kafka.log.
    Without Java or the jars of .ci/install-kafka the tests that use it skip,
    except in CI (CI set), where they fail.
    """
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_metadata(external)
        yield Broker(external)
        return
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(apache_kafka(tmp_path_factory.mktemp("kafka")))
        except BrokerUnavailable as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip(str(exc))
        yield broker


@pytest.fixture
def own_broker(kafka_broker: Broker) -> Broker:
    """The session's broker, for a test that pauses or stops it (and brings it back).

    Skipped where KAFKA_BOOTSTRAP_SERVERS names an external broker: that one is not ours.
    """
    if kafka_broker.process is None:
        pytest.skip("pauses the session's broker; KAFKA_BOOTSTRAP_SERVERS names an external one")
    return kafka_broker


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A FRAUD_MODEL_DIR holding copies of the shipped GRU (`gru.onnx`) and stateless model."""
    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(MODELS / "fraud_gru.onnx", d / "gru.onnx")
    shutil.copy(MODELS / "fraud_stateless.onnx", d / "stateless.onnx")
    return d
