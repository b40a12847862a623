"""Run the job as a real process, kill it, resume it, and read back its state and outputs.

Every kill test proves that its kill interrupted a running job (`kill_running`,
`assert_interrupted`): each process exits by SIGKILL, and the job had written
fewer distinct outputs than the clean run writes in all. A test whose job had
already finished (a fast machine, a run too short for its kill window) fails
instead of passing without having tested a crash.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bytewax_fraud.state.base import USER_PREFIX
from bytewax_fraud.state.codec import decode_headers
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.state.rocksdb import RocksStore

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class JobDirs:
    """The directories of one job: state, recovery and outputs."""

    root: Path

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def recovery(self) -> Path:
        return self.root / "recovery"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def env(self, **extra: Any) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "FRAUD_STATE_DIR": str(self.state),
                "FRAUD_RECOVERY_DIR": str(self.recovery),
                "FRAUD_OUTPUT_DIR": str(self.out),
                "FRAUD_STATUS_INTERVAL": "0",
                "FRAUD_SNAPSHOT_INTERVAL": "0.5",
                "FRAUD_BACKUP_INTERVAL": "0",
            }
        )
        env.update({k: str(v) for k, v in extra.items()})
        return env


#: The production entry point, and the test-only one that injects faults (fault_job.py).
JOB = [sys.executable, "-m", "bytewax_fraud"]
FAULT_JOB = [sys.executable, str(Path(__file__).with_name("fault_job.py"))]


def start(dirs: JobDirs, args: list[str] = (), **env: Any) -> subprocess.Popen[bytes]:  # type: ignore[assignment]
    """Start `python -m bytewax_fraud` for these directories.

    Given any `TEST_FAULT_*` variable, the job runs through `fault_job.py`, which
    injects those faults into the production job (see its docstring).
    """
    dirs.root.mkdir(parents=True, exist_ok=True)
    entry = FAULT_JOB if any(k.startswith("TEST_FAULT_") for k in env) else JOB
    return subprocess.Popen(
        [*entry, *args],
        env=dirs.env(**env),
        cwd=dirs.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def run(dirs: JobDirs, args: list[str] = (), timeout: float = 300, **env: Any) -> str:  # type: ignore[assignment]
    """Run to completion; returns stderr; raises if the job failed."""
    p = start(dirs, args, **env)
    _, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"job failed ({p.returncode}):\n{err.decode()[-3000:]}")
    return err.decode()


class OutputCount(Protocol):
    """How many distinct outputs (transaction ids) a job has written so far."""

    def count(self) -> int: ...


@dataclass
class FileOutputs:
    """Distinct transaction ids in a predictions file, read incrementally as it grows."""

    path: Path
    _pos: int = 0
    _ids: set[str] = field(default_factory=set)

    def count(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._pos)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
            for line in chunk[:end].splitlines():
                self._ids.add(json.loads(line)["transaction_id"])
            self._pos += end
        return len(self._ids)


def assert_interrupted(
    procs: Sequence[subprocess.Popen[bytes]], outputs: OutputCount, clean_outputs: int
) -> int:
    """Fail unless the job died by SIGKILL before writing everything; its outputs at the kill.

    Call it once every process has exited (after a kill, or a kill the job gave itself).
    """
    for i, p in enumerate(procs):
        err = p.stderr.read().decode() if p.stderr else ""
        assert p.returncode == -signal.SIGKILL, (
            f"process {i} exited with {p.returncode}, not by SIGKILL: the kill hit no running"
            f" job\n{err[-3000:]}"
        )
    written = outputs.count()
    assert written < clean_outputs, (
        f"the job had written all {clean_outputs} outputs before it was killed: no crash was"
        " tested; kill it sooner or give it more input"
    )
    return written


def kill_running(
    procs: Sequence[subprocess.Popen[bytes]], outputs: OutputCount, clean_outputs: int
) -> int:
    """SIGKILL a running job (every process) and prove the kill interrupted it.

    Returns:
        The distinct outputs the job had written when it died (fewer than `clean_outputs`).
    """
    for i, p in enumerate(procs):
        assert p.poll() is None, f"process {i} ended ({p.returncode}) before its kill"
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.wait(timeout=60)
    return assert_interrupted(procs, outputs, clean_outputs)


def run_with_kills(
    dirs: JobDirs,
    kills: int,
    rng: random.Random,
    *,
    clean_outputs: int,
    outputs: OutputCount | None = None,
    args_per_run: list[list[str]] | None = None,
    window: tuple[float, float] = (2.0, 5.0),
    after_output: bool = False,
    **env: Any,
) -> int:
    """SIGKILL the job `kills` times at random moments, resuming each time; then finish.

    A kill comes `window` seconds after the start, or, with `after_output`, after
    the run first adds to the predictions file (so start-up time, which varies
    from machine to machine, does not decide whether a kill hits). It comes
    sooner if the job has written 90 % of `clean_outputs`, so that a fast machine
    still kills a running job. Every kill must interrupt the job (`kill_running`).

    Args:
        clean_outputs: Distinct outputs of the clean run (its transaction ids).
        outputs: Counts the job's outputs (default: its predictions file).

    Returns:
        How many kills hit a running job: all of them, or the test fails.
    """
    counter = outputs or FileOutputs(dirs.out / "predictions.jsonl")
    cap = int(0.9 * clean_outputs)
    for i in range(kills + 1):
        args = (args_per_run or [[]])[min(i, len(args_per_run or [[]]) - 1)]
        p = start(dirs, args, **env)
        if i == kills:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err.decode()[-3000:]
            return kills
        delay = rng.uniform(*window)
        if after_output:
            _wait_for_output(p, dirs.out / "predictions.jsonl")
        deadline = time.monotonic() + delay
        while p.poll() is None and time.monotonic() < deadline and counter.count() < cap:
            time.sleep(0.05)
        kill_running([p], counter, clean_outputs)
    return kills


def _wait_for_output(p: subprocess.Popen[bytes], path: Path, timeout: float = 120.0) -> None:
    """Wait until the running job writes to `path` (or ends)."""
    size = path.stat().st_size if path.exists() else 0
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > size:
            return
        time.sleep(0.01)


def live_records(state_dir: Path, ttl: float) -> dict[bytes, bytes]:
    """Every user record not expired at its partition's watermark (expired ones read as absent)."""
    partitions = json.loads((state_dir / "manifest.json").read_text())["partitions"]
    out: dict[bytes, bytes] = {}
    for p in range(partitions):
        path = partition_dir(state_dir, p)
        if not path.exists():
            continue
        store = RocksStore(path)
        try:
            items = store.scan(USER_PREFIX, bytes([USER_PREFIX[0] + 1]), 10_000_000)
        finally:
            store.close()
        if not items:
            continue
        heads = decode_headers([v for _, v in items])
        watermark = float(heads["last_ts"].max())
        keep = np.flatnonzero(heads["last_ts"] >= watermark - ttl).tolist()
        out.update(items[i] for i in keep)
    return out


def predictions(out_dir: Path) -> dict[str, str]:
    """Predictions by transaction id, without the measured latency; duplicates must agree."""
    result: dict[str, str] = {}
    for line in (out_dir / "predictions.jsonl").read_text().splitlines():
        d = json.loads(line)
        d.pop("latency_ms")
        text = json.dumps(d, sort_keys=True)
        prev = result.setdefault(d["transaction_id"], text)
        assert prev == text, f"duplicate differs: {prev} vs {text}"
    return result
