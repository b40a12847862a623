"""Kafka in and out against a real broker (tansu, started by the `kafka_broker` fixture)."""

from __future__ import annotations

import base64
import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSource, cluster_main, run_main
from confluent_kafka import Producer
from kafka_broker import Broker

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka import KafkaSetupError
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, create_topic
from bytewax_fraud.connectors.kafka.config import MASK, masked, read_properties_file
from bytewax_fraud.connectors.kafka.sinks import headers_dict
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.parse import parse_message
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.records import RawMessage
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.state.__main__ import show
from bytewax_fraud.status import STATS
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

PARTITIONS = 4
EVENTS = 20_000
USERS = 500
SEED = 3


def kafka_settings(tmp: Path, bootstrap: str, prefix: str, **kw: Any) -> Settings:
    base: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "topic_transactions": f"{prefix}-transactions",
        "topic_predictions": f"{prefix}-predictions",
        "topic_dead_letters": f"{prefix}-dead-letters",
        "kafka_stop_at_end": True,
        "partitions": PARTITIONS,
        "state_dir": tmp / "state",
        "output_dir": tmp / "out",
        "status_interval": 0,
        "batch_max": 256,
    }
    base.update(kw)
    return load_settings(**base)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def create_topics(s: Settings, input_topic: bool = True) -> None:
    admin = admin_client({"bootstrap.servers": s.kafka_bootstrap_servers})
    if input_topic:
        create_job_topics(
            admin,
            s.partitions,
            s.topic_transactions,
            s.topic_predictions,
            s.topic_dead_letters,
            s.kafka_max_message_bytes,
        )
    else:  # only the outputs (the input topic is shared with another run)
        for t in (s.topic_predictions, s.topic_dead_letters):
            create_topic(admin, t, s.partitions)


def read_topic(s: Settings, topic: str) -> list[Any]:
    return list(messages(kafka_connection(s).consumer(s.start), topic, s.partitions))


def predictions_of(s: Settings) -> list[dict[str, Any]]:
    out = []
    for msg in read_topic(s, s.topic_predictions):
        p = json.loads(msg.value())
        assert msg.key() == p["user_id"].encode()
        assert msg.partition() == partition_for(p["user_id"], s.partitions)  # murmur2 placement
        out.append(p)
    return out


def canonical(preds: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(
        json.dumps({k: v for k, v in p.items() if k != "latency_ms"}, sort_keys=True) for p in preds
    )


def events(n: int = EVENTS) -> list[tuple[bytes | None, bytes]]:
    return list(generated(USERS, SEED, n))


@pytest.fixture(scope="module")
def clean_run(
    kafka_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Settings, list[dict[str, Any]], float]:
    """A 1-worker Kafka run over EVENTS generated events: its settings, predictions, seconds."""
    s = kafka_settings(
        tmp_path_factory.mktemp("clean"), kafka_broker.bootstrap_servers, unique("clean")
    )
    create_topics(s)
    produce(kafka_connection(s).producer(), s.topic_transactions, PARTITIONS, events())
    t0 = time.monotonic()
    run_main(build_dataflow(s))
    took = time.monotonic() - t0
    return s, predictions_of(s), took


def embedded_predictions(tmp: Path, msgs: list[tuple[bytes | None, bytes]]) -> list[dict[str, Any]]:
    """The embedded run (file sinks) over the same bytes, numbered as Kafka numbers them."""
    offsets = [0] * PARTITIONS
    raw = []
    for key, value in msgs:
        assert key is not None
        p = partition_for(key.decode(), PARTITIONS)
        raw.append(RawMessage(value, key, "transactions", p, offsets[p], None, time.time_ns()))
        offsets[p] += 1
    s = load_settings(
        partitions=PARTITIONS,
        state_dir=tmp / "state",
        output_dir=tmp / "out",
        status_interval=0,
        batch_max=256,
    )
    run_main(build_dataflow(s, source=TestingSource(raw, batch_size=256)))
    lines = (s.output_dir / "predictions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.kafka
def test_every_event_gets_one_prediction_equal_to_the_embedded_run(
    clean_run: tuple[Settings, list[dict[str, Any]], float], tmp_path: Path
) -> None:
    s, preds, took = clean_run
    produced = events()
    expected_ids = [json.loads(v)["transaction_id"] for _, v in produced]
    ids = [p["transaction_id"] for p in preds]
    assert len(ids) == len(set(ids)) == EVENTS
    assert set(ids) == set(expected_ids)
    print(f"\nKafka end to end: {EVENTS} events in {took:.2f} s ({EVENTS / took:,.0f} ev/s)")

    embedded = {p["transaction_id"]: p for p in embedded_predictions(tmp_path, produced)}
    assert len(embedded) == EVENTS
    identical = 0
    worst = 0.0
    for p in preds:
        e = embedded[p["transaction_id"]]
        for k in ("user_id", "model", "partition", "offset", "label", "event_timestamp"):
            assert p[k] == e[k], (k, p, e)
        identical += p["probability"] == e["probability"]
        worst = max(worst, abs(p["probability"] - e["probability"]))
    print(f"bit-identical probabilities: {identical}/{EVENTS}; largest difference {worst:.3g}")
    # Batches cut differently (Kafka fetches vs. the test source) give the model
    # other batch sizes, which may change float rounding in the last bits.
    assert worst <= 1e-6


@pytest.mark.kafka
def test_two_workers_give_the_same_predictions_as_one(
    clean_run: tuple[Settings, list[dict[str, Any]], float], tmp_path: Path
) -> None:
    one, preds_one, _ = clean_run
    s = kafka_settings(
        tmp_path,
        one.kafka_bootstrap_servers or "",
        unique("two"),
        topic_transactions=one.topic_transactions,  # same input, own outputs
    )
    create_topics(s, input_topic=False)
    cluster_main(build_dataflow(s), [], 0, worker_count_per_proc=2)
    preds_two = predictions_of(s)
    assert len(preds_two) == EVENTS
    assert canonical(preds_two) == canonical(preds_one)


def _produce_with_positions(
    config: dict[str, Any], topic: str, msgs: list[tuple[bytes | None, bytes]]
) -> list[tuple[int, int, int]]:
    """Produce in order; the (partition, offset, timestamp ms) of each message."""
    producer = Producer(config)
    where: dict[int, tuple[int, int, int]] = {}
    failed: list[Any] = []

    def report(i: int) -> Any:
        def cb(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(err)
            else:
                where[i] = (msg.partition(), msg.offset(), msg.timestamp()[1])

        return cb

    for i, (key, value) in enumerate(msgs):
        producer.produce(topic, value, key, on_delivery=report(i))
        producer.poll(0)
    producer.flush()
    assert not failed
    return [where[i] for i in range(len(msgs))]


@pytest.mark.kafka
def test_poison_messages_land_in_the_dead_letter_topic_with_original_bytes(
    kafka_broker: Broker, tmp_path: Path, bad_corpus: list[dict[str, Any]]
) -> None:
    s = kafka_settings(tmp_path, kafka_broker.bootstrap_servers, unique("dlq"))
    create_topics(s)
    good = events(1000)
    big = {"kind": "beyond-kafka-default-1mb", "value": b"{" + b" " * 3_000_000 + b"}"}
    big.update(stage="decode", reason_contains="larger than the")
    cases = [*bad_corpus, big]
    # Non-UTF-8 keys: the dead letter must keep the key bytes, not a decoded string.
    bad = [(b"\xff\xfe" + f"bad-{i}".encode(), c["value"]) for i, c in enumerate(cases)]
    msgs = list(itertools.chain.from_iterable(zip(good, bad, strict=False))) + good[len(bad) :]
    positions = _produce_with_positions(kafka_connection(s).producer(), s.topic_transactions, msgs)
    origin = {msgs.index(b): positions[msgs.index(b)] for b in bad}

    run_main(build_dataflow(s))

    assert len(predictions_of(s)) == len(good)  # valid neighbours are scored, the job kept going
    dead = read_topic(s, s.topic_dead_letters)
    assert len(dead) == len(cases)
    by_key = {m.key(): m for m in dead}
    for i, case in enumerate(cases):
        key, value = bad[i]
        msg = by_key[key]
        assert (msg.value() or b"") == value, case["kind"]  # byte-identical original value
        h = headers_dict(msg.headers())
        p, o, ts = origin[msgs.index(bad[i])]
        assert h["__connect.errors.topic"] == s.topic_transactions
        assert h["__connect.errors.partition"] == str(p)
        assert h["__connect.errors.offset"] == str(o)
        assert h["__connect.errors.timestamp"] == str(ts)
        assert h["__connect.errors.stage"] == case["stage"], case["kind"]
        assert h["__connect.errors.exception.class.name"], case["kind"]
        assert case["reason_contains"] in h["__connect.errors.exception.message"], case["kind"]
    assert by_key[bad[-1][0]].value() == big["value"]


@pytest.mark.kafka
def test_broker_outage_loses_nothing_and_duplicates_nothing(
    own_broker: Broker,
    clean_run: tuple[Settings, list[dict[str, Any]], float],
    tmp_path: Path,
) -> None:
    clean, clean_preds, _ = clean_run
    # Small fetches and a small local queue, so the reader meets the outage too.
    props = {"queued.max.messages.kbytes": 256, "max.partition.fetch.bytes": 65536}
    s = kafka_settings(
        tmp_path, own_broker.bootstrap_servers, unique("outage"), kafka_properties=props
    )
    create_topics(s)
    produce(kafka_connection(s).producer(), s.topic_transactions, PARTITIONS, events())

    start = STATS.scored
    paused: list[float] = []
    at_pause: list[int] = []

    def outage() -> None:
        while STATS.scored - start < EVENTS // 3:
            time.sleep(0.005)
        own_broker.pause()
        at_pause.append(STATS.scored - start)
        t0 = time.monotonic()
        try:
            time.sleep(20)
        finally:
            own_broker.resume()
        paused.append(time.monotonic() - t0)

    t = threading.Thread(target=outage, daemon=True)
    t.start()
    run_main(build_dataflow(s))
    t.join(60)
    assert paused and paused[0] >= 20
    assert EVENTS // 3 <= at_pause[0] < EVENTS  # the outage came mid-run
    assert STATS.scored - start == EVENTS  # no event scored twice, none skipped

    preds = predictions_of(s)
    by_id = {p["transaction_id"]: p for p in preds}  # de-duplicated (at-least-once)
    assert canonical(by_id.values()) == canonical(clean_preds)
    users = {p["user_id"] for p in clean_preds}
    for u in sorted(users):
        assert show(s.state_dir, u) == show(clean.state_dir, u), u


@pytest.mark.kafka
def test_wrong_partition_count_or_missing_topic_fails_at_start(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    s = kafka_settings(tmp_path, kafka_broker.bootstrap_servers, unique("wrong"), partitions=2)
    create_topics(s)
    wrong = kafka_settings(
        tmp_path / "w",
        kafka_broker.bootstrap_servers,
        "x",
        topic_transactions=s.topic_transactions,
        topic_predictions=s.topic_predictions,
        topic_dead_letters=s.topic_dead_letters,
        partitions=4,
    )
    with pytest.raises(KafkaSetupError, match="has 2 partitions but FRAUD_PARTITIONS=4") as err:
        build_dataflow(wrong)
    assert "FRAUD_PARTITIONS=2" in str(err.value)  # the fix is named
    missing = kafka_settings(
        tmp_path / "m", kafka_broker.bootstrap_servers, unique("missing"), partitions=4
    )
    with pytest.raises(KafkaSetupError, match="do not exist: create them"):
        build_dataflow(missing)


# --- client configuration (no broker needed) ---------------------------------------------


def test_properties_file_json_overrides_and_secrets_are_masked(tmp_path: Path) -> None:
    f = tmp_path / "client.properties"
    f.write_text(
        "# SASL over TLS\n"
        "security.protocol=SASL_SSL\n"
        "! another comment\n"
        "sasl.mechanism = PLAIN\n"
        "sasl.username: fraud\n"
        "sasl.password=hunter2\n"
        "linger.ms=20\n"
    )
    assert read_properties_file(f)["sasl.username"] == "fraud"
    s = load_settings(
        kafka_bootstrap_servers="b1:9092,b2:9092",
        kafka_config_file=f,
        kafka_properties={"linger.ms": 50, "sasl.oauthbearer.client.secret": "s3"},
    )
    cfg = kafka_connection(s).producer()
    assert cfg["bootstrap.servers"] == "b1:9092,b2:9092"
    assert cfg["security.protocol"] == "SASL_SSL"
    assert cfg["linger.ms"] == 50  # JSON overrides the file
    assert cfg["acks"] == "all" and cfg["enable.idempotence"] is True
    assert cfg["partitioner"] == "murmur2_random"
    shown = masked(cfg)
    assert shown["sasl.password"] == MASK and shown["sasl.oauthbearer.client.secret"] == MASK
    assert "hunter2" not in repr(s) and "s3" not in repr(s)
    assert (
        kafka_connection(s).consumer(s.start)["max.partition.fetch.bytes"]
        >= s.kafka_max_message_bytes
    )


def test_bootstrap_servers_from_either_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUD_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "plain:9092")
    assert load_settings().kafka_bootstrap_servers == "plain:9092"
    monkeypatch.setenv("FRAUD_KAFKA_BOOTSTRAP_SERVERS", "prefixed:9092")
    assert load_settings().kafka_bootstrap_servers == "prefixed:9092"


def test_invalid_properties_never_reveal_secrets(tmp_path: Path) -> None:
    s = load_settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        kafka_properties={"no.such.property": "x", "sasl.password": "hunter2"},
    )
    with pytest.raises(KafkaSetupError) as err:
        admin_client(kafka_connection(s).producer())
    assert "hunter2" not in str(err.value)
    assert MASK in str(err.value)


def test_dead_letter_value_b64_round_trip() -> None:
    # The key kept for Kafka is the original bytes, even when they are not UTF-8.
    from bytewax_fraud.connectors.kafka.sinks import dead_letter_message

    raw = RawMessage(b"nope", b"\xff\x00k", "t", 1, 7, 1.5, 0)
    dead = parse_message(raw)
    key, value, headers = dead_letter_message(dead)  # type: ignore[arg-type]
    assert key == b"\xff\x00k" and value == b"nope"
    assert dict(headers)["__connect.errors.timestamp"] == b"1500"
    assert base64.b64decode(dead.key_b64 or "") == b"\xff\x00k"  # type: ignore[union-attr]


def test_undelivered_messages_are_counted_and_stop_the_sink() -> None:
    from bytewax_fraud.connectors.kafka.errors import KafkaDeliveryError
    from bytewax_fraud.connectors.kafka.sinks import KafkaDeadLetterSink

    s = load_settings(
        kafka_bootstrap_servers="127.0.0.1:1",  # nothing listens there
        kafka_properties={"message.timeout.ms": 300, "log_level": 0},
    )
    part = KafkaDeadLetterSink("dead", kafka_connection(s).producer()).build("out", 0, 1)
    dead = parse_message(RawMessage(b"nope", None, "t", 0, 0, None, 0))
    before = STATS.delivery_failures
    with pytest.raises(KafkaDeliveryError, match="1 message.*not delivered"):
        part.write_batch([dead])  # type: ignore[list-item]
    assert STATS.delivery_failures == before + 1


def test_bad_properties_setting_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    from bytewax_fraud.errors import SettingsError

    monkeypatch.setenv("FRAUD_KAFKA_PROPERTIES", '{"sasl.password": {"nested": "hunter2"}}')
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert "hunter2" not in str(err.value)


@pytest.mark.kafka
def test_control_topic_commands_apply_and_rejections_are_dead_letters(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    """Commands already on `model-control` apply before the first event; a bad one is a
    dead letter on the dead-letter topic; the run still ends at the end of its input."""
    prefix = unique("control")
    s = kafka_settings(
        tmp_path, kafka_broker.bootstrap_servers, prefix, topic_control=f"{prefix}-control"
    )
    create_topics(s)
    admin = admin_client({"bootstrap.servers": s.kafka_bootstrap_servers})
    create_topic(admin, s.topic_control, 1)
    commands = [
        (None, b'{"command": "load", "model_id": "ctl", "path": "fraud_stateless.onnx"}'),
        (None, b'{"command": "load", "model_id": "bad", "path": "nope.onnx"}'),
    ]
    produce(kafka_connection(s).producer(), s.topic_control, 1, commands)
    produce(kafka_connection(s).producer(), s.topic_transactions, PARTITIONS, events(2_000))
    run_main(build_dataflow(s))
    preds = predictions_of(s)
    assert len(preds) == 2_000
    assert {p["model"].split("@")[0] for p in preds} == {"ctl"}
    dead = read_topic(s, s.topic_dead_letters)
    assert len(dead) == 1
    headers = headers_dict(dead[0].headers())
    assert headers["__connect.errors.stage"] == "control"
    assert headers["__connect.errors.exception.class.name"] == "ModelNotFound"


def test_the_broker_started_here_reports_its_jit_compilers_cpu_time(own_broker: Broker) -> None:
    """What the bench's warm-up watches (`tools/bench/reader.warm_up`): a JVM's compilers."""
    spent = own_broker.jit_cpu_seconds()
    assert spent is not None and spent > 0.0  # a started JVM has compiled its startup paths
    assert Broker(own_broker.bootstrap_servers).jit_cpu_seconds() is None  # not ours to watch
