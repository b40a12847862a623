"""Graceful stop: SIGTERM or SIGINT end the input, and the job finishes what it holds.

The entry points call `install()`. On the first signal the handler only sets a
flag; every source partition checks it at its next `next_batch` and ends
(`StopIteration`) with its resume state at the next offset to read. Bytewax then
treats the run as finished: the events in flight are scored, the final epoch is
snapshotted (input offsets, partition logics, sink positions), the sinks flush,
and the process exits 0, usually well within a second. The next run resumes
from those offsets with nothing to replay.

A second signal stops at once (exit 128 + signal number), like a crash: the next
run resumes from the last snapshot as after a kill.

Without a handler, a job running as PID 1 in a container ignores SIGTERM (the
kernel drops signals PID 1 has no handler for), so `docker stop`, `podman stop`
and Kubernetes wait out the grace period and SIGKILL it.

In a multi-process cluster every process must be stopped: a process whose input
ended waits for the others, as Bytewax finishes the dataflow only when every
input partition has ended.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from types import FrameType

#: The signals that stop the job gracefully; the Dockerfile's STOPSIGNAL is one of them.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested = threading.Event()
_signal_name: list[str] = []


def requested() -> bool:
    """Whether a stop was asked for; sources end their partitions once it is."""
    return _requested.is_set()


def request() -> None:
    """Ask the job to stop, as the first SIGTERM does."""
    _requested.set()


def reset() -> None:
    """Forget a stop request (for tests that run several jobs in one process)."""
    _requested.clear()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    if _requested.is_set():
        print(f"[fraud] {name} again: stopping now, without a final snapshot", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)
    _requested.set()
    _signal_name.append(name)
    print(
        f"[fraud] {name}: stopping; finishing the events in flight and taking a final snapshot"
        f" (send {name} again to stop at once)",
        file=sys.stderr,
        flush=True,
    )


def _report() -> None:
    if _signal_name:
        print(
            f"[fraud] stopped by {_signal_name[0]} after a final snapshot; the next run resumes"
            " where this one stopped",
            file=sys.stderr,
            flush=True,
        )


def install() -> None:
    """Make SIGTERM and SIGINT stop the job gracefully (call from the main thread)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)
    atexit.unregister(_report)
    atexit.register(_report)
