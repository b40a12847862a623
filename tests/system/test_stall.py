"""A stalled cluster is detected; a slow or idle one is not (the stall watchdog, issue 26).

The partition test runs each process of a 2-process cluster on its own test host:
a network namespace, the two joined by a veth pair. Dropping their packets with
iptables is a network partition as a failed link would cause it: nothing resets
the connections. The tests use a short FRAUD_STALL_TIMEOUT and 0.5-s epochs; each
prints the detection time it measured.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import Broker
from recovery_harness import ROOT, JobDirs, predictions, run
from test_cluster import addresses

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics
from bytewax_fraud.settings import load_settings

EVENTS = 20_000
BASE: dict[str, Any] = {
    "FRAUD_EVENTS": EVENTS,
    "FRAUD_USERS": 2_000,
    "FRAUD_PARTITIONS": 4,
    "FRAUD_SEED": 11,
}
#: The timeout the detection tests run with (the job's epochs are 0.5 s: JobDirs.env).
TIMEOUT = 4.0
#: What a loaded 2-core CI machine may add to the timeout before a stall is seen.
MARGIN = 30.0
SLOW_BATCH_JOB = ROOT / "tests" / "system" / "slow_batch_job.py"


def start(
    dirs: JobDirs, args: list[str], prefix: list[str] = (), script: Path | None = None, **env: Any
) -> subprocess.Popen[bytes]:  # type: ignore[assignment]
    """Start one process of the job (`prefix` runs it in a namespace)."""
    dirs.root.mkdir(parents=True, exist_ok=True)
    entry = [str(script)] if script else ["-m", "bytewax_fraud"]
    return subprocess.Popen(
        [*prefix, sys.executable, *entry, *args],
        env=dirs.env(**env),
        cwd=dirs.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish(procs: list[subprocess.Popen[bytes]], timeout: float = 300) -> list[str]:
    """Wait for every process; returns their stderr; fails naming a failed one."""
    errs = []
    try:
        for i, p in enumerate(procs):
            _, err = p.communicate(timeout=timeout)
            errs.append(err.decode())
            assert p.returncode == 0, f"process {i} failed ({p.returncode}):\n{errs[-1][-3000:]}"
    finally:
        stop(procs)
    return errs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.communicate()


def wait_for_lines(path: Path, n: int, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait until `path` holds `n` lines; fail if a process ended before (the fault came late)."""
    deadline = time.monotonic() + 120
    while True:
        lines = path.read_bytes().count(b"\n") if path.exists() else 0
        if lines >= n:
            return
        ended = [i for i, p in enumerate(procs) if p.poll() is not None]
        assert not ended, f"process {ended} ended before the fault ({lines} predictions)"
        assert time.monotonic() < deadline, f"only {lines} predictions after 120 s"
        time.sleep(0.05)


def wait_for_exits(procs: list[subprocess.Popen[bytes]], t0: float) -> list[tuple[int, float, str]]:
    """Each process's (exit status, seconds after t0, stderr); kills what outlives the bound."""
    bound = t0 + TIMEOUT + MARGIN
    out: list[tuple[int, float, str]] = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(bound - time.monotonic(), 0.1))
            out.append((p.returncode, time.monotonic() - t0, err.decode()))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            out.append((p.returncode, float("inf"), err.decode()))
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Predictions of a clean 1-process run, by transaction id."""
    dirs = JobDirs(tmp_path_factory.mktemp("clean"))
    run(dirs, **BASE)
    want = predictions(dirs.out)
    assert len(want) == EVENTS
    return want


# --- test hosts: two network namespaces joined by a veth pair ----------------------------


@dataclass(frozen=True)
class Hosts:
    names: tuple[str, str]
    links: tuple[str, str]
    ips: tuple[str, str]

    def exec(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    def cut(self) -> None:
        """Drop every packet between the hosts (both ways, at host 0): no reset is sent."""
        for rule in (["INPUT", "-i"], ["OUTPUT", "-o"]):
            sh(*self.exec(0), "iptables", "-A", rule[0], rule[1], self.links[0], "-j", "DROP")

    def restore(self) -> None:
        sh(*self.exec(0), "iptables", "-F")


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    """Two test hosts; skips, saying why, where namespaces cannot be made."""
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing (.ci/install-netns-tools installs them)")
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = uuid.uuid4().hex[:6]
    names = (f"fraud-{tag}-0", f"fraud-{tag}-1")
    links = (f"fv{tag}0", f"fv{tag}1")
    net = f"10.{random.randint(64, 127)}.{random.randint(0, 255)}"
    ips = (f"{net}.1", f"{net}.2")
    made: list[str] = []
    try:
        for name in names:
            sh("ip", "netns", "add", name)
            made.append(name)
        sh("ip", "link", "add", links[0], "type", "veth", "peer", "name", links[1])
        for name, link, ip in zip(names, links, ips, strict=True):
            sh("ip", "link", "set", link, "netns", name)
            sh("ip", "-n", name, "addr", "add", f"{ip}/24", "dev", link)
            sh("ip", "-n", name, "link", "set", link, "up")
            sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", names[0], "iptables", "-L", "-n")
    except (subprocess.CalledProcessError, OSError) as exc:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        detail = (
            exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else exc
        )
        pytest.skip(f"cannot make network namespaces here: {detail}")
    try:
        yield Hosts(names, links, ips)
    finally:
        for name in names:  # deleting a namespace deletes its end of the veth pair, and the pair
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def test_a_network_partition_stops_both_processes_and_a_restart_is_exact(
    hosts: Hosts, clean: dict[str, str], tmp_path: Path
) -> None:
    dirs = JobDirs(tmp_path / "cut")
    # Each namespace is a fresh network stack: any port is free in it.
    port = addresses(1).rsplit(":", 1)[1]
    addrs = ";".join(f"{ip}:{port}" for ip in hosts.ips)
    env = {**BASE, "FRAUD_STALL_TIMEOUT": TIMEOUT}
    procs = [
        start(dirs, ["-i", str(i), "-a", addrs], hosts.exec(i), FRAUD_RATE=2_000, **env)
        for i in range(2)
    ]
    try:
        wait_for_lines(dirs.out / "predictions.jsonl", EVENTS // 5, procs)
        hosts.cut()
        t0 = time.monotonic()
        exits = wait_for_exits(procs, t0)
    finally:
        stop(procs)
        hosts.restore()
    print(f"partition: detection {[round(t, 1) for _, t, _ in exits]} s (timeout {TIMEOUT} s)")
    for i, (code, took, err) in enumerate(exits):
        assert took <= TIMEOUT + MARGIN, f"process {i} still up {took:.1f} s after the cut"
        assert code == 2, f"process {i} exited {code}:\n{err[-3000:]}"
        assert "error: ClusterStalled: no epoch completed for" in err, err[-3000:]
        assert "[fraud] stopped by ClusterStalled: scored" in err, err[-3000:]  # the summary

    # The link is back: the cluster resumes from its last snapshot, exactly.
    finish([start(dirs, ["-i", str(i), "-a", addrs], hosts.exec(i), **env) for i in range(2)])
    assert predictions(dirs.out) == clean


def livez(port: int) -> tuple[int, str]:
    """The status and body of /livez (0 while nothing listens yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except urllib.error.URLError as exc:
        return 0, str(exc)


def test_a_stopped_peer_fails_liveness(tmp_path: Path) -> None:
    """SIGSTOP (a hung process, not a network fault): the survivor's /livez fails in time."""
    dirs = JobDirs(tmp_path / "stopped")
    addrs = addresses(2)
    port = int(addresses(1).rsplit(":", 1)[1])
    env = {**BASE, "FRAUD_STALL_TIMEOUT": TIMEOUT, "FRAUD_RATE": 2_000}
    survivor = start(
        dirs, ["-i", "0", "-a", addrs], FRAUD_STALL_EXIT="false", FRAUD_METRICS_PORT=port, **env
    )
    peer = start(dirs, ["-i", "1", "-a", addrs], **env)
    try:
        wait_for_lines(dirs.out / "predictions.jsonl", EVENTS // 5, [survivor, peer])
        assert livez(port)[0] == 200
        peer.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        while (answer := livez(port))[0] == 200:
            assert time.monotonic() - t0 < TIMEOUT + MARGIN, "liveness still OK"
            assert survivor.poll() is None
            time.sleep(0.1)
        took = time.monotonic() - t0
        print(f"SIGSTOP: /livez failed after {took:.1f} s (timeout {TIMEOUT} s)")
        assert answer[0] == 503 and answer[1].startswith("ClusterStalled: no epoch completed for")
        time.sleep(1.0)
        assert survivor.poll() is None  # FRAUD_STALL_EXIT=false: it stays up, unlive
        survivor.kill()
        _, err = survivor.communicate()
    finally:
        stop([peer, survivor])
    assert "warning: ClusterStalled: no epoch completed for" in err.decode()


def test_a_slow_batch_shorter_than_the_timeout_is_not_a_stall(
    clean: dict[str, str], tmp_path: Path
) -> None:
    """One process blocks its worker for 3 s in one batch; timeout 8 s: both finish, exactly."""
    pause, timeout = 3.0, 8.0
    dirs = JobDirs(tmp_path / "slow")
    addrs = addresses(2)
    env = {**BASE, "FRAUD_STALL_TIMEOUT": timeout, "FRAUD_RATE": 4_000}
    procs = [
        start(dirs, ["-i", "0", "-a", addrs], script=SLOW_BATCH_JOB, **env),
        start(
            dirs, ["-i", "1", "-a", addrs], script=SLOW_BATCH_JOB, SLOW_BATCH_PAUSE_S=pause, **env
        ),
    ]
    errs = finish(procs)
    assert f"slow-batch-job: pausing {pause}" in errs[1]
    gaps = [float(e.rsplit("longest epoch gap ", 1)[1].split()[0]) for e in errs]
    print(f"slow batch: longest epoch gaps {gaps} s (pause {pause} s, timeout {timeout} s)")
    assert min(gaps) >= 0.8 * pause  # the pause held back the whole cluster's epochs
    assert predictions(dirs.out) == clean


@pytest.mark.kafka
def test_one_process_on_an_idle_topic_is_never_stalled(
    kafka_broker: Broker, tmp_path: Path
) -> None:
    """No event at all for 5 timeouts: /livez answers 200 throughout; SIGTERM ends it with 0."""
    tag = uuid.uuid4().hex[:8]
    env = {
        "FRAUD_PARTITIONS": 4,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker.bootstrap_servers,
        "FRAUD_TOPIC_TRANSACTIONS": f"idle-{tag}-transactions",
        "FRAUD_TOPIC_PREDICTIONS": f"idle-{tag}-predictions",
        "FRAUD_TOPIC_DEAD_LETTERS": f"idle-{tag}-dead-letters",
    }
    s = load_settings(
        kafka_bootstrap_servers=kafka_broker.bootstrap_servers,
        topic_transactions=env["FRAUD_TOPIC_TRANSACTIONS"],
        topic_predictions=env["FRAUD_TOPIC_PREDICTIONS"],
        topic_dead_letters=env["FRAUD_TOPIC_DEAD_LETTERS"],
    )
    create_job_topics(
        admin_client(kafka_connection(s).admin()),
        4,
        s.topic_transactions,
        s.topic_predictions,
        s.topic_dead_letters,
        s.kafka_max_message_bytes,
    )
    timeout = 2.0
    port = int(addresses(1).rsplit(":", 1)[1])
    dirs = JobDirs(tmp_path / "idle")
    p = start(dirs, [], FRAUD_STALL_TIMEOUT=timeout, FRAUD_METRICS_PORT=port, **env)
    try:
        deadline = time.monotonic() + 120
        while livez(port)[0] != 200:  # the server is up once the job has started
            assert p.poll() is None, p.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        watched_until = time.monotonic() + 5 * timeout
        answers = []
        while time.monotonic() < watched_until:
            answers.append(livez(port))
            time.sleep(0.1)
        assert p.poll() is None
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        stop([p])
    assert p.returncode == 0, err.decode()[-3000:]
    assert all(a == (200, "ok\n") for a in answers), [a for a in answers if a[0] != 200][:3]
    assert "fraud_events_in_total 0.0" in metrics
    epochs = float(metrics.split("\nfraud_epochs_completed_total ", 1)[1].split()[0])
    assert epochs >= 10  # idle, yet epochs completed (4 partitions, 0.5-s epochs)
