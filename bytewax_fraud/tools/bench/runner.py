"""The plumbing every variant uses: start a job's processes, reap them, read what they wrote.

A variant's processes start as one Bytewax cluster on free ports, with only the
bench's own `FRAUD_*` settings (`base_env`, `start_processes`); `wait` reaps
them and keeps each one's peak RSS. An embedded job's predictions file is
polled while it runs (`poll_predictions`): the steady rate is the lines written
between the first and the last prediction over the time between them
(`steady_rate`), and the predictions of the first `warmup_s` are not counted
(`warmup_lines`). Latencies are summed up as p50, p99 and p99.9 (`percentiles`).
"""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from bytewax_fraud.tools.bench.config import ROOT, RUN_TIMEOUT_S
from bytewax_fraud.tools.local_broker import BOOTSTRAP_ENV, stat_cpu_seconds

#: A prediction's `latency_ms` field.
LATENCY = re.compile(rb'"latency_ms":([^,}]+)')
#: Where a prediction names its input (partition, offset).
PRED_POS = re.compile(rb'"partition":(\d+),"offset":(\d+)')
#: Peak RSS of each reaped subprocess, by pid (Popen has no place for its rusage).
_MAXRSS_KIB: dict[int, int] = {}


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system, all threads) a live process has used; None if unreadable."""
    try:
        return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))
    except (OSError, IndexError, ValueError):
        return None


def percentiles(lat_ms: np.ndarray) -> tuple[float, float, float]:
    if len(lat_ms) == 0:
        return (math.nan, math.nan, math.nan)
    p = np.percentile(lat_ms, [50, 99, 99.9])
    return (round(float(p[0]), 3), round(float(p[1]), 3), round(float(p[2]), 3))


def wait(procs: list[subprocess.Popen[bytes]], deadline: float) -> list[tuple[int | None, int]]:
    """Reap processes with `os.wait4`: (exit code, ru_maxrss in KiB) each, (None, 0) if running.

    A process still running after `deadline` (monotonic), or whose sibling failed,
    is killed.
    """
    failed = any(p.returncode not in (None, 0) for p in procs)
    out: list[tuple[int | None, int]] = []
    for p in procs:
        if p.returncode is not None:
            out.append((p.returncode, _MAXRSS_KIB.get(p.pid, 0)))
            continue
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == 0:
            if failed or time.monotonic() > deadline:
                p.kill()
            out.append((None, 0))
            continue
        p.returncode = os.waitstatus_to_exitcode(status)
        _MAXRSS_KIB[p.pid] = ru.ru_maxrss
        out.append((p.returncode, ru.ru_maxrss))
    return out


def tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def base_env(root: Path = ROOT) -> dict[str, str]:
    # Inherited FRAUD_* settings would change what is measured: only ours apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    # Settings read it too (it would switch the embedded runs to Kafka).
    env.pop(BOOTSTRAP_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    return env


def start_processes(
    cmd: list[str], env: dict[str, str], d: Path, processes: int, root: Path = ROOT
) -> list[subprocess.Popen[bytes]]:
    """Start `processes` processes of `cmd` as one Bytewax cluster (logs and summaries in `d`)."""
    addresses = ";".join(f"127.0.0.1:{p}" for p in _free_ports(processes))
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(processes):
        penv = dict(env, FRAUD_SUMMARY_FILE=str(d / f"summary-{i}.json"))
        args = cmd + (["-i", str(i), "-a", addresses] if processes > 1 else [])
        with open(d / f"log-{i}.txt", "wb") as log:
            procs.append(
                subprocess.Popen(args, cwd=root, env=penv, stdout=log, stderr=subprocess.STDOUT)
            )
    return procs


def poll_predictions(path: Path, procs: list[subprocess.Popen[bytes]]) -> list[tuple[float, int]]:
    """(time, lines written) samples of the predictions file until every process exits."""
    samples: list[tuple[float, int]] = []
    lines = 0
    f = None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        while True:
            done = all(rc is not None for rc, _ in wait(procs, deadline))
            if f is None and path.exists():
                f = open(path, "rb")  # noqa: SIM115 - closed below
            if f is not None:
                n = f.read().count(b"\n")
                if n:
                    lines += n
                    samples.append((time.monotonic(), lines))
            if done:
                return samples
            time.sleep(0.02)  # reading the file costs CPU the job would otherwise get
    finally:
        if f is not None:
            f.close()


def warmup_lines(samples: list[tuple[float, int]], warmup_s: float, events: int) -> int:
    """Predictions written in the first `warmup_s` after the first one (at most half)."""
    if not samples:
        return 0
    t0 = samples[0][0]
    before = [n for t, n in samples if t - t0 < warmup_s]
    return min(before[-1] if before else 0, events // 2)


def steady_rate(
    samples: list[tuple[float, int]], events: int, summaries: list[dict[str, Any]]
) -> float:
    """Events/s between the first and the last prediction (the summary's rate if too short)."""
    if len(samples) >= 2:
        (t0, n0), (t1, n1) = samples[0], samples[-1]
        if t1 - t0 > 0.05 and n1 > n0:
            return (n1 - n0) / (t1 - t0)
    return sum(float(s["events_per_s"]) for s in summaries)
