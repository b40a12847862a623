"""Inputs that lie, through Kafka (the test broker): misrouted, far-ahead and late events.

The faulty topic holds the clean twin's events, in the same order and with the
same record timestamps, plus the faulty ones. Kafka numbers offsets densely, so
predictions are compared without their offset and records without theirs.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import run_main
from confluent_kafka import Producer
from kafka_broker import Broker
from test_kafka import create_topics, kafka_settings, predictions_of, read_topic, unique

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.sinks import headers_dict
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.settings import Settings
from bytewax_fraud.state.base import USER_PREFIX
from bytewax_fraud.state.codec import decode_one
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.state.rocksdb import RocksStore
from bytewax_fraud.status import STATS
from bytewax_fraud.tools.produce import event_time_ms, generated

PARTITIONS = 4
YEAR = 365.25 * 86400
Msg = tuple[bytes | None, bytes, int, int]  # key, value, partition, timestamp ms


def _produce(s: Settings, msgs: list[Msg]) -> list[tuple[int, int]]:
    """Produce in order to explicit partitions; the (partition, offset) of each."""
    producer = Producer(kafka_connection(s).producer())
    where: dict[int, tuple[int, int]] = {}
    failed: list[Any] = []

    def report(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(err)
            else:
                where[i] = (msg.partition(), msg.offset())

        return cb

    for i, (key, value, p, ts) in enumerate(msgs):
        producer.produce(
            s.topic_transactions, value, key, partition=p, timestamp=ts, on_delivery=report(i)
        )
        producer.poll(0)
    producer.flush()
    assert not failed
    return [where[i] for i in range(len(msgs))]


def _records(s: Settings) -> dict[str, dict[str, object]]:
    """Every user record, without its offset (Kafka's offsets differ between the twins)."""
    out: dict[str, dict[str, object]] = {}
    for p in range(PARTITIONS):
        store = RocksStore(partition_dir(s.state_dir, p))
        try:
            items = store.scan(USER_PREFIX, bytes([USER_PREFIX[0] + 1]), 10_000_000)
        finally:
            store.close()
        for k, v in items:
            rec = decode_one(v)
            rec.pop("last_offset")
            out[k[1:].decode()] = rec
    return out


def _without_offsets(preds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        p["transaction_id"]: {k: v for k, v in p.items() if k not in ("offset", "latency_ms")}
        for p in preds
    }


@pytest.mark.kafka
def test_misrouted_far_ahead_and_late_events_are_dead_letters_with_connect_headers(
    kafka_broker: Broker, tmp_path: Path, context_corpus: list[dict[str, Any]]
) -> None:
    good: list[Msg] = []
    last: dict[str, dict[str, Any]] = {}
    for key, value in generated(400, 21, 4000):
        tx = json.loads(value)
        p = partition_for(tx["user_id"], PARTITIONS)
        good.append((key, value, p, event_time_ms(value) or 0))
        last[tx["user_id"]] = tx
    head, tail = good[:3000], good[3000:]
    now_ms = head[-1][3]  # the producer's clock: the time of the latest event
    users = sorted(last, key=lambda u: -last[u]["timestamp"])[:8]

    def fault(user: str, n: int, **changes: Any) -> bytes:
        return json.dumps({**last[user], "transaction_id": f"fault-{n}", **changes}).encode()

    faults: list[Msg] = []
    for i, user in enumerate(users[:4]):  # keyed by a card number, placed by it
        home = partition_for(user, PARTITIONS)
        faults.append((b"card-%d" % i, fault(user, i), (home + 1 + i % 3) % 4, now_ms))
    for i, user in enumerate(users[4:6]):  # a device clock decades / hours ahead
        ahead = 40 * YEAR if i == 0 else 3 * 3600.0
        value = fault(user, 10 + i, timestamp=now_ms / 1000 + ahead)
        faults.append((user.encode(), value, partition_for(user, PARTITIONS), now_ms))
    value = fault(users[6], 20, user_id="u-offline-terminal", timestamp=now_ms / 1000 - 5 * 86400)
    faults.append((b"u-offline-terminal", value, partition_for("u-offline-terminal", 4), now_ms))
    for case in context_corpus:  # each corpus case of a context Kafka gives
        key = base64.b64decode(case["key_b64"]) if "key_b64" in case else None
        user = json.loads(case["value"])["user_id"]
        p = partition_for((key or user.encode()).decode(), PARTITIONS)
        faults.append((key or user.encode(), case["value"], p, now_ms))

    prefix = unique("lying")
    s = kafka_settings(tmp_path / "faulty", kafka_broker.bootstrap_servers, prefix)
    twin = kafka_settings(tmp_path / "twin", kafka_broker.bootstrap_servers, prefix + "-twin")
    create_topics(s)
    create_topics(twin)
    positions = _produce(s, head + faults + tail)[len(head) : len(head) + len(faults)]
    _produce(twin, head + tail)
    before = STATS.summary()
    run_main(build_dataflow(s))
    after = STATS.summary()
    run_main(build_dataflow(twin))

    assert _without_offsets(predictions_of(s)) == _without_offsets(predictions_of(twin))
    assert _records(s) == _records(twin)
    assert read_topic(twin, twin.topic_dead_letters) == []
    dead = read_topic(s, s.topic_dead_letters)
    assert len(dead) == len(faults)
    by_origin = {}
    for msg in dead:
        h = headers_dict(msg.headers())
        assert h["__connect.errors.topic"] == s.topic_transactions
        by_origin[(int(h["__connect.errors.partition"]), int(h["__connect.errors.offset"]))] = (
            msg,
            h,
        )
    expected = ["WrongPartition"] * 4 + ["TimestampTooFarAhead"] * 2 + ["TimestampTooLate"]
    expected += [c["error_class"] for c in context_corpus]
    for (key, value, _, ts), where, cls in zip(faults, positions, expected, strict=True):
        msg, h = by_origin[where]
        assert (msg.key(), msg.value()) == (key, value)  # the original bytes
        assert h["__connect.errors.exception.class.name"] == cls
        assert h["__connect.errors.timestamp"] == str(ts)
        reason = h["__connect.errors.exception.message"]
        if cls == "WrongPartition":
            home = partition_for(json.loads(value)["user_id"], PARTITIONS)
            assert h["__connect.errors.stage"] == "routing"
            assert f"belongs to partition {home}" in reason
            assert f"arrived on partition {where[0]}" in reason
        else:
            assert h["__connect.errors.stage"] == "event_time"
            assert "FRAUD_MAX_FUTURE_SKEW" in reason or "FRAUD_ALLOWED_LATENESS" in reason
    counts = {k: after[k] - before[k] for k in ("misrouted", "too_early", "too_late")}  # type: ignore[operator]
    assert counts == {
        "misrouted": expected.count("WrongPartition"),
        "too_early": expected.count("TimestampTooFarAhead"),
        "too_late": expected.count("TimestampTooLate"),
    }


@pytest.mark.kafka
def test_produce_with_librdkafkas_default_partitioner_shows_misrouting(
    kafka_broker: Broker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`produce --partitioner consistent_random` (CRC32): the users it puts on another
    partition than murmur2 are all WrongPartition dead letters; the others (CRC32 is per key,
    so a user is wholly on one side) get the predictions of a correctly keyed run."""
    from bytewax_fraud.tools import produce

    runs = {}
    for name, partitioner in (("crc32", "consistent_random"), ("murmur2", "murmur2_random")):
        prefix = unique(f"produce-{name}")
        s = kafka_settings(tmp_path / name, kafka_broker.bootstrap_servers, prefix)
        monkeypatch.setenv("FRAUD_TOPIC_PREDICTIONS", s.topic_predictions)
        monkeypatch.setenv("FRAUD_TOPIC_DEAD_LETTERS", s.topic_dead_letters)
        args = ["--events", "3000", "--users", "300", "--seed", "2", "--topic"]
        args += [s.topic_transactions, "--create-topic", "--partitions", str(PARTITIONS)]
        args += ["--bootstrap-servers", s.kafka_bootstrap_servers or "", "--partitioner"]
        assert produce.main([*args, partitioner]) == 0
        runs[name] = (s, capsys.readouterr().err)
        run_main(build_dataflow(s))
    s, err = runs["crc32"]
    assert "NOT murmur2" in err and "messages are NOT in their user's murmur2 partition" in err
    assert "every keyed message is in its murmur2 partition" in runs["murmur2"][1]
    dead = read_topic(s, s.topic_dead_letters)
    classes = {headers_dict(m.headers())["__connect.errors.exception.class.name"] for m in dead}
    assert classes == {"WrongPartition"}
    misrouted_users = {m.key().decode() for m in dead}
    preds = _without_offsets(predictions_of(s))
    assert len(preds) + len(dead) == 3000 and len(dead) > 1000
    assert not {p["user_id"] for p in preds.values()} & misrouted_users
    good = _without_offsets(predictions_of(runs["murmur2"][0]))
    assert preds == {t: p for t, p in good.items() if p["user_id"] not in misrouted_users}
