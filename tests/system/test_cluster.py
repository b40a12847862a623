"""A 2-process cluster (`python -m bytewax_fraud -i ID -a ADDRS`) predicts what 1 process does.

Both processes run on this machine with the same state, recovery and output
directories, as processes on several machines would with shared storage (see
docs/operations.md).
"""

from __future__ import annotations

import json
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import Broker
from recovery_harness import JobDirs, predictions, run, start

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, create_topic
from bytewax_fraud.settings import Settings, load_settings
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

EVENTS = 20_000
BASE: dict[str, Any] = {
    "FRAUD_EVENTS": EVENTS,
    "FRAUD_USERS": 2_000,
    "FRAUD_PARTITIONS": 4,
    "FRAUD_SEED": 9,
}


def addresses(n: int) -> str:
    ports = []
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ";".join(f"127.0.0.1:{p}" for p in ports)


def run_cluster(dirs: JobDirs, processes: int, timeout: float = 300, **env: Any) -> None:
    """Start every process of the cluster, wait for all, fail with the stderr of a failed one."""
    addrs = addresses(processes)
    procs = [start(dirs, ["-i", str(i), "-a", addrs], **env) for i in range(processes)]
    errors = []
    try:
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=timeout)
            if p.returncode != 0:
                errors.append(f"process {i} failed ({p.returncode}):\n{err.decode()[-3000:]}")
    except subprocess.TimeoutExpired:
        errors.append(f"the cluster did not finish within {timeout} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    assert not errors, "\n".join(errors)


def test_two_processes_predict_what_one_does(tmp_path: Path) -> None:
    one = JobDirs(tmp_path / "one")
    run(one, **BASE)
    two = JobDirs(tmp_path / "two")
    run_cluster(two, 2, **BASE)
    want, got = predictions(one.out), predictions(two.out)
    assert len(want) == EVENTS
    assert got == want


# --- the same against Kafka: a 4-partition input topic ------------------------------------


def kafka_env(broker: Broker, prefix: str, input_topic: str) -> dict[str, Any]:
    return {
        **BASE,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "FRAUD_TOPIC_TRANSACTIONS": input_topic,
        "FRAUD_TOPIC_PREDICTIONS": f"{prefix}-predictions",
        "FRAUD_TOPIC_DEAD_LETTERS": f"{prefix}-dead-letters",
        "FRAUD_KAFKA_STOP_AT_END": "true",
    }


def settings_for(broker: Broker, env: dict[str, Any]) -> Settings:
    return load_settings(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        partitions=env["FRAUD_PARTITIONS"],
        topic_transactions=env["FRAUD_TOPIC_TRANSACTIONS"],
        topic_predictions=env["FRAUD_TOPIC_PREDICTIONS"],
        topic_dead_letters=env["FRAUD_TOPIC_DEAD_LETTERS"],
    )


def kafka_predictions(s: Settings) -> dict[str, str]:
    """Predictions by transaction id, without latency; duplicates must agree."""
    out: dict[str, str] = {}
    for msg in messages(kafka_connection(s).consumer(s.start), s.topic_predictions, s.partitions):
        d = json.loads(msg.value() or b"")
        d.pop("latency_ms")
        text = json.dumps(d, sort_keys=True)
        assert out.setdefault(d["transaction_id"], text) == text
    return out


@pytest.mark.kafka
def test_two_processes_on_a_kafka_topic_predict_what_one_does(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    input_topic = f"cluster-{tag}-transactions"
    env_one = kafka_env(kafka_broker, f"cluster-{tag}-one", input_topic)
    env_two = kafka_env(kafka_broker, f"cluster-{tag}-two", input_topic)
    one, two = settings_for(kafka_broker, env_one), settings_for(kafka_broker, env_two)
    admin = admin_client({"bootstrap.servers": kafka_broker.bootstrap_servers})
    create_job_topics(
        admin,
        4,
        one.topic_transactions,
        one.topic_predictions,
        one.topic_dead_letters,
        one.kafka_max_message_bytes,
    )
    for topic in (two.topic_predictions, two.topic_dead_letters):
        create_topic(admin, topic, 4)
    produce(
        kafka_connection(one).producer(),
        input_topic,
        4,
        generated(BASE["FRAUD_USERS"], BASE["FRAUD_SEED"], EVENTS),
    )

    run(JobDirs(tmp_path / "one"), **env_one)
    run_cluster(JobDirs(tmp_path / "two"), 2, **env_two)
    want, got = kafka_predictions(one), kafka_predictions(two)
    assert len(want) == EVENTS
    assert got == want
