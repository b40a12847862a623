"""The stall watchdog: the epoch signal, the timeout, the line, /livez, and idle input."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, TestingSource, run_main
from prometheus_client.parser import text_string_to_metric_families

from bytewax_fraud.connectors.epochs import EpochSignal
from bytewax_fraud.errors import SettingsError
from bytewax_fraud.process.progress import Progress
from bytewax_fraud.process.watchdog import (
    DEFAULT_TIMEOUT,
    Watchdog,
    effective_timeout,
    stall_reason,
)
from bytewax_fraud.settings import load_settings
from bytewax_fraud.status import RunStats
from bytewax_fraud.telemetry import start_exporter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_values(text: str) -> dict[str, float]:
    """Unlabelled samples by name."""
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.labels
    }


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_watched_from_the_first_partition_until_every_one_ended() -> None:
    clock = FakeClock()
    p = Progress(clock)
    assert p.view().age is None  # nothing built yet: start-up and resume are not judged
    p.opened()
    p.opened()
    clock.now += 2.0
    assert p.view().age == 2.0
    p.epoch_completed()
    clock.now += 0.5
    p.epoch_completed()
    clock.now += 3.0
    view = p.view()
    assert (view.age, view.epochs, view.longest_gap) == (3.0, 2, 2.0)
    p.ended()
    assert p.view().age == 3.0  # one partition still reads
    p.ended()
    assert p.view().age is None  # input ended: only waiting for peers to finish


def test_stall_reason_names_cause_and_fix_once_the_timeout_passed() -> None:
    clock = FakeClock()
    p = Progress(clock)
    p.opened()
    clock.now += 9.9
    assert stall_reason(p, 10.0) is None
    clock.now += 0.2
    line = stall_reason(p, 10.0)
    assert line is not None and "\n" not in line
    assert line.startswith("ClusterStalled: no epoch completed for 10 s (FRAUD_STALL_TIMEOUT=10 s)")
    assert "Fix:" in line and "FRAUD_STALL_EXIT=false" in line
    assert stall_reason(p, 0.0) is None  # off
    p.epoch_completed()
    assert stall_reason(p, 10.0) is None


def test_timeout_defaults_to_60_s_or_three_epochs_and_refuses_less() -> None:
    assert effective_timeout(None, 5.0) == DEFAULT_TIMEOUT == 60.0
    assert effective_timeout(None, 30.0) == 90.0
    assert effective_timeout(0.0, 5.0) == 0.0
    assert effective_timeout(2.0, 0.5) == 2.0
    with pytest.raises(SettingsError, match=r"FRAUD_STALL_TIMEOUT=10 s .*at least 15 s"):
        effective_timeout(10.0, 5.0)


def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("exit_on_stall", [True, False])
def test_watchdog_stops_the_process_only_when_asked(exit_on_stall: bool) -> None:
    clock = FakeClock()
    p = Progress(clock)
    p.opened()
    stopped: list[str] = []
    dog = Watchdog(p, 5.0, exit_on_stall, stop=stopped.append).start()
    try:
        clock.now += 4.0
        time.sleep(1.5)  # three checks: not stalled yet
        assert stopped == [] and dog.reason() is None
        clock.now += 2.0
        if exit_on_stall:
            wait_until(lambda: stopped)
            assert stopped[0].startswith("ClusterStalled: no epoch completed for 6 s")
        else:
            time.sleep(1.5)
            assert stopped == []
            assert (dog.reason() or "").startswith("ClusterStalled:")
    finally:
        dog.close()


def test_exit_now_says_one_line_and_exits_2() -> None:
    code = (
        "from bytewax_fraud.process import fatal; fatal.install();"
        " fatal.exit_now('ClusterStalled: no epoch completed for 9 s', 2)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.decode().strip() == "error: ClusterStalled: no epoch completed for 9 s"


def test_livez_beside_metrics_follows_the_watchdog() -> None:
    port = free_port()
    reason: list[str] = []
    progress = Progress()
    progress.opened()
    progress.epoch_completed()
    assert start_exporter(
        port,
        addr="127.0.0.1",
        stats=RunStats(),
        progress=progress,
        liveness=lambda: reason[0] if reason else None,
    )
    url = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{url}/livez", timeout=5) as resp:
        assert (resp.status, resp.read()) == (200, b"ok\n")
    reason.append("ClusterStalled: no epoch completed for 61 s")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/livez", timeout=5)
    assert err.value.code == 503
    assert err.value.read() == b"ClusterStalled: no epoch completed for 61 s\n"
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:  # still scraped
        samples = scrape_values(resp.read().decode())
    assert samples["fraud_epochs_completed_total"] == 1
    assert 0 <= samples["fraud_epoch_age_seconds"] < 60


# --- the signal under a real Bytewax run ------------------------------------------------


class _IdlePartition(StatefulSourcePartition[int, None]):
    """No item at all for `seconds`, then the end."""

    def __init__(self, seconds: float) -> None:
        self._end = time.monotonic() + seconds

    def next_batch(self) -> list[int]:
        if time.monotonic() >= self._end:
            raise StopIteration()
        return []

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + timedelta(milliseconds=20)

    def snapshot(self) -> None:
        return None


class IdleSource(FixedPartitionedSource[int, None]):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def list_parts(self) -> list[str]:
        return ["only"]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _IdlePartition:
        return _IdlePartition(self.seconds)


def test_idle_input_still_completes_epochs() -> None:
    """No event for 2 s with 0.1-s epochs: epochs keep completing, the gap stays an epoch."""
    progress = Progress()
    flow = Dataflow("idle")
    op.output("out", op.input("in", flow, EpochSignal(IdleSource(2.0), progress)), TestingSink([]))
    ages: list[float | None] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            ages.append(progress.view().age)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        run_main(flow, epoch_interval=timedelta(seconds=0.1))
    finally:
        stop.set()
        sampler.join()
    view = progress.view()
    assert view.epochs >= 10
    assert view.age is None  # the input ended: no longer watched
    seen = [a for a in ages if a is not None]
    assert seen and max(seen) < 1.0


def test_items_and_snapshots_pass_through_unchanged() -> None:
    progress = Progress()
    out: list[int] = []
    flow = Dataflow("pass")
    op.output(
        "out",
        op.input("in", flow, EpochSignal(TestingSource([1, 2, 3]), progress)),
        TestingSink(out),
    )
    run_main(flow)
    assert out == [1, 2, 3]
    assert progress.view().epochs >= 1


def test_k8s_liveness_asks_livez_and_readiness_stays_on_metrics() -> None:
    manifest = (Path(__file__).resolve().parents[3] / "deploy/k8s/statefulset.yaml").read_text()
    probes = dict(re.findall(r"(\w+Probe):\s*\n\s*httpGet: \{path: (\S+),", manifest))
    assert probes == {"readinessProbe": "/metrics", "livenessProbe": "/livez"}


def test_stall_settings_parse_durations_and_refuse_nonsense() -> None:
    assert load_settings(stall_timeout="2m").stall_timeout == 120.0
    assert load_settings().stall_timeout is None
    assert load_settings(stall_exit="false").stall_exit is False
    with pytest.raises(SettingsError, match="FRAUD_STALL_TIMEOUT='soon'"):
        load_settings(stall_timeout="soon")


def test_a_timeout_too_short_for_the_snapshot_interval_fails_at_start(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "FRAUD_STALL_TIMEOUT": "4",
        "FRAUD_SNAPSHOT_INTERVAL": "5",
        "FRAUD_RECOVERY_DIR": str(tmp_path / "recovery"),
        "FRAUD_STATE_DIR": str(tmp_path / "state"),
        "FRAUD_OUTPUT_DIR": str(tmp_path / "out"),
        "FRAUD_EVENTS": "10",
    }
    p = subprocess.run(
        [sys.executable, "-m", "bytewax_fraud"], env=env, capture_output=True, timeout=120
    )
    assert p.returncode == 2
    assert "error: SettingsError: FRAUD_STALL_TIMEOUT=4 s is under 3 epoch intervals" in (
        p.stderr.decode()
    )
