"""Graceful stop: SIGTERM/SIGINT end the input, the job exits 0, and the next run resumes.

The system tests run the job as a real process (both entry points), stop it mid-run,
resume it, and compare with an uninterrupted run of the same events: every prediction
exactly once, nothing replayed, and the same user state.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from recovery_harness import JobDirs, live_records, predictions, run

from bytewax_fraud.connectors.generator_source import GeneratorSource
from bytewax_fraud.process import shutdown

EVENTS = 120_000
TTL = 12 * 3600.0
ENV = {
    "FRAUD_EVENTS": EVENTS,
    "FRAUD_USERS": 12_000,
    "FRAUD_PARTITIONS": 4,
    "FRAUD_SEED": 9,
    "FRAUD_STATE_TTL": "12h",
    "FRAUD_SWEEP_INTERVAL": "0.2",
    "FRAUD_SNAPSHOT_INTERVAL": "1",
}
#: The stopped run is paced so that the stop lands mid-run on any machine; the scores do not
#: depend on the pacing (batch boundaries), only on the events.
PACED = {"FRAUD_RATE": 15_000}
#: "Within a few seconds": a stop measured ~0.3 s on 2 loaded cores.
STOP_WITHIN_S = 5.0


@pytest.fixture
def no_stop_request() -> Iterator[None]:
    shutdown.reset()
    yield
    shutdown.reset()


def _drain(part: object) -> list[bytes | None]:
    values: list[bytes | None] = []
    while True:
        try:
            batches = part.next_batch()  # type: ignore[attr-defined]
        except StopIteration:
            return values
        for b in batches:
            values += b.values


def test_generator_partition_ends_on_request_and_resumes_from_its_snapshot(
    no_stop_request: None,
) -> None:
    source = GeneratorSource(users=50, seed=3, partitions=2, events=2000, batch_max=64)
    key = source.list_parts()[0]
    whole = _drain(source.build_part("in", key, None))

    part = source.build_part("in", key, None)
    first = part.next_batch()[0].values + part.next_batch()[0].values
    shutdown.request()
    with pytest.raises(StopIteration):
        part.next_batch()
    resume = part.snapshot()
    assert resume == len(first) == 128  # the next offset, not "finished"
    shutdown.reset()
    rest = _drain(source.build_part("in", key, resume))
    assert first + rest == whole


def test_second_signal_stops_at_once() -> None:
    code = (
        "import os, signal, time\n"
        "from bytewax_fraud.process import shutdown\n"
        "shutdown.install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "assert shutdown.requested()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 128 + signal.SIGTERM, p.stderr
    assert "stopping now" in p.stderr


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> JobDirs:
    """One uninterrupted run, the reference."""
    dirs = JobDirs(tmp_path_factory.mktemp("clean"))
    run(dirs, **ENV)
    return dirs


def _start(dirs: JobDirs, entry: str, workers: int, **env: object) -> subprocess.Popen[bytes]:
    dirs.root.mkdir(parents=True, exist_ok=True)
    if entry == "bytewax_fraud":
        cmd = ["-m", "bytewax_fraud", "-w", str(workers)]
    else:  # bytewax's own runner, with its own recovery flags (as the image runs it)
        cmd = ["-m", "bytewax.run", "dataflows.fraud", "-w", str(workers)]
        cmd += ["-r", str(dirs.recovery), "-s", "1", "-b", "0"]
    return subprocess.Popen(
        [sys.executable, *cmd],
        env=dirs.env(**env),
        cwd=dirs.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def stop_mid_run(
    dirs: JobDirs, entry: str, workers: int, sig: signal.Signals, **env: object
) -> float:
    """Start the job, signal it once it has written predictions; returns the stop time."""
    p = _start(dirs, entry, workers, **env)
    out = dirs.out / "predictions.jsonl"
    deadline = time.monotonic() + 120
    while _lines(out) < 5_000:
        assert p.poll() is None, p.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline, "no predictions within 120 s"
        time.sleep(0.05)
    p.send_signal(sig)
    t0 = time.monotonic()
    try:
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    took = time.monotonic() - t0
    text = err.decode()
    assert p.returncode == 0, text[-3000:]
    assert f"stopped by {sig.name}" in text, text[-2000:]
    print(f"{entry} -w {workers}: {sig.name} -> exit 0 in {took:.2f} s")
    return took


@pytest.mark.parametrize(
    ("entry", "workers", "sig"),
    [
        ("bytewax_fraud", 1, signal.SIGTERM),
        ("bytewax_fraud", 2, signal.SIGINT),
        ("bytewax.run", 1, signal.SIGTERM),
    ],
)
def test_stop_exits_0_and_resume_matches_a_clean_run(
    tmp_path: Path, clean: JobDirs, entry: str, workers: int, sig: signal.Signals
) -> None:
    dirs = JobDirs(tmp_path)
    took = stop_mid_run(dirs, entry, workers, sig, **ENV, **PACED)
    assert took < STOP_WITHIN_S
    stopped_at = _lines(dirs.out / "predictions.jsonl")
    assert 0 < stopped_at < EVENTS, "the stop must land mid-run"

    p = _start(dirs, entry, workers, **ENV)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err.decode()[-3000:]
    summary = re.search(r"scored ([\d,]+) events.*replayed ([\d,]+)", err.decode())
    assert summary, err.decode()[-2000:]
    scored, replayed = (int(g.replace(",", "")) for g in summary.groups())
    assert (scored, replayed) == (EVENTS - stopped_at, 0), "the resume replays nothing"

    assert _lines(dirs.out / "predictions.jsonl") == EVENTS  # each prediction once
    assert predictions(dirs.out) == predictions(clean.out)
    assert live_records(dirs.state, TTL) == live_records(clean.state, TTL)
