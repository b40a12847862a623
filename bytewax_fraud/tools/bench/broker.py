"""The Kafka side of a variant: the broker, fresh topics, the job's settings, the topics' clocks.

`bench_broker` gives the broker (`KAFKA_BOOTSTRAP_SERVERS`, else an Apache
Kafka started here), `kafka_run` a variant's directory and fresh job topics,
`kafka_env` the job's settings. `produce_paced` produces at an offered rate,
`wait_for_messages` waits for a topic to fill while the job runs, `topic_rate`
reads a steady rate off the messages' CreateTime timestamps.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.connectors.kafka.config import KafkaConnection
from bytewax_fraud.settings import load_settings
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.tools.bench.config import (
    ROOT,
    RUN_TIMEOUT_S,
    WINDOW,
    BenchConfig,
    BenchError,
)
from bytewax_fraud.tools.bench.runner import (
    base_env,
    tail,
)
from bytewax_fraud.tools.local_broker import BOOTSTRAP_ENV, Broker, BrokerUnavailable, any_broker

if TYPE_CHECKING:
    from confluent_kafka import Producer


#: Kafka client settings passed to the Kafka variant's job (where and how to connect).
_KAFKA_PASS_THROUGH = ("FRAUD_KAFKA_PROPERTIES", "FRAUD_KAFKA_CONFIG_FILE")


@contextmanager
def bench_broker(workdir: Path) -> Iterator[tuple[Broker | None, str]]:
    """The Kafka variant's broker and its description, or None and why there is none."""
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(any_broker(workdir / "kafka"))
        except BrokerUnavailable as exc:
            yield None, str(exc)
            return
        where = "Apache Kafka, started here" if broker.process else f"external ({BOOTSTRAP_ENV})"
        yield broker, f"{where} at {broker.bootstrap_servers}"


#: How long the bench's input producer lingers: what upstream clients do (the Java
#: client's default since Kafka 4.0), fixed here so that the broker-alone floor does not
#: move when the job's own producer defaults change.
INPUT_LINGER_MS = 5


def input_config(conn: KafkaConnection) -> dict[str, Any]:
    """Properties of the bench's input producer: the job's settings, upstream's linger."""
    return {**conn.producer(), "linger.ms": INPUT_LINGER_MS}


def input_producer(conn: KafkaConnection) -> Producer:
    """The producer of the bench's input messages (`input_config`)."""
    from confluent_kafka import Producer

    return Producer(input_config(conn))


def produce_paced(
    producer: Producer,
    topic: str,
    msgs: list[tuple[bytes | None, bytes]],
    rate: float,
    tick_s: float = 0.001,
) -> list[float]:
    """Produce `msgs` (key, value) at `rate` messages/s, then flush.

    Every message due by now is produced, then the pacer sleeps until the next
    one is due (at least `tick_s`): it never spins. A pacer that waited in
    `poll(due - now)` per message spun a core (librdkafka rounds a wait under
    1 ms to 0), which the job and the broker then lacked on a small machine.

    Returns:
        Each message's wall-clock time just before its `produce()` (epoch seconds).
    """
    stamps: list[float] = []
    n = len(msgs)
    t0 = time.monotonic()
    i = 0
    while i < n:
        due = min(n, int((time.monotonic() - t0) * rate) + 1)
        while i < due:
            key, value = msgs[i]
            stamp = time.time()
            try:
                producer.produce(topic, value, key)
            except BufferError:  # the local queue is full: serve reports, then retry
                producer.poll(0.001)
                continue
            stamps.append(stamp)
            i += 1
        producer.poll(0)
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(max(wait, tick_s))
    producer.flush()
    return stamps


def kafka_env(
    cfg: BenchConfig,
    broker: Broker,
    prefix: str,
    t_in: str,
    t_pred: str,
    t_dl: str,
    d: Path,
    *,
    root: Path = ROOT,
) -> dict[str, str]:
    """The Kafka variants' job environment (fresh state in `d`, stop at the end of the input)."""
    ensure_manifest(d / "state", cfg.partitions, WINDOW)
    env = base_env(root)
    env.update({k: os.environ[k] for k in _KAFKA_PASS_THROUGH if k in os.environ})
    env.update(
        {
            BOOTSTRAP_ENV: broker.bootstrap_servers,
            "FRAUD_KAFKA_STOP_AT_END": "1",
            "FRAUD_TOPIC_TRANSACTIONS": t_in,
            "FRAUD_TOPIC_PREDICTIONS": t_pred,
            "FRAUD_TOPIC_DEAD_LETTERS": t_dl,
            # Never created: no model control during the run.
            "FRAUD_TOPIC_CONTROL": f"{prefix}-control",
            "FRAUD_USERS": str(cfg.users),
            "FRAUD_PARTITIONS": str(cfg.partitions),
            "FRAUD_SEED": str(cfg.seed),
            "FRAUD_MODEL": str(cfg.model),
            "FRAUD_DEVICE": cfg.device,
            "FRAUD_STATE_DIR": str(d / "state"),
            "FRAUD_OUTPUT_DIR": str(d / "out"),
            "FRAUD_STATUS_INTERVAL": "0",
        }
    )
    return env


@dataclass(frozen=True)
class KafkaRun:
    """A Kafka variant's own directory and topics, created on the broker."""

    dir: Path
    prefix: str
    t_in: str
    t_pred: str
    t_dl: str
    conn: KafkaConnection


def kafka_run(cfg: BenchConfig, broker: Broker, workdir: Path, name: str, tag: str) -> KafkaRun:
    """Make a variant's directory under `workdir` and its three job topics (`tag` prefixes them)."""
    d = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=workdir))
    prefix = f"fraud-{tag}-{uuid.uuid4().hex[:8]}"
    t_in, t_pred, t_dl = (f"{prefix}-{t}" for t in ("transactions", "predictions", "dead-letters"))
    s = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers, partitions=cfg.partitions)
    conn = kafka_connection(s)
    create_job_topics(
        admin_client(conn.admin()), cfg.partitions, t_in, t_pred, t_dl, s.kafka_max_message_bytes
    )
    return KafkaRun(d, prefix, t_in, t_pred, t_dl, conn)


def wait_for_messages(
    config: dict[str, Any], topic: str, want: int, proc: subprocess.Popen[bytes], log: Path
) -> None:
    """Read `topic` from the beginning until it holds `want` messages, while the job runs."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({**config, "group.id": "bytewax-fraud-bench", "enable.auto.commit": False})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got = 0
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while got < want:
            if proc.poll() is not None:
                raise BenchError(f"the job exited with {proc.returncode}:\n{tail(log)}")
            if time.monotonic() > deadline:
                raise BenchError(f"{topic}: {got} of {want} predictions arrived in time")
            got += sum(1 for m in c.consume(1000, 0.05) if m.error() is None)
    finally:
        c.close()


def topic_rate(
    ts_ms: np.ndarray, warmup_s: float, events: int, fallback: float
) -> tuple[float, int]:
    """(events/s, predictions in the warm-up) from sorted message timestamps in ms.

    The rate counts the messages after the first timestamp over the time to the
    last one (the job summary's rate if that span is under 50 ms).
    """
    t0, t1 = int(ts_ms[0]), int(ts_ms[-1])
    rate = fallback
    if t1 - t0 >= 50:
        rate = int(np.count_nonzero(ts_ms > t0)) / ((t1 - t0) / 1000.0)
    skip = int(np.searchsorted(ts_ms, t0 + warmup_s * 1000.0, side="left"))
    return rate, min(skip, events // 2)
