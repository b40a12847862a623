"""The stall watchdog: a process whose cluster completed no epoch for FRAUD_STALL_TIMEOUT stops.

A Bytewax cluster whose peer is cut off by a network partition, or hung (a
stopped process, a stuck call), does not fail: every process waits for the
peer's progress forever, at 0 events/s, and answers `/metrics` as usual. The
epoch signal (`process.progress`) stops coming in exactly that case, while an
idle job still completes an epoch every epoch interval.

Once the signal is older than the timeout, `/livez` fails (503, the reason as
its body) and, unless FRAUD_STALL_EXIT=false, the process prints one line naming
the cause and the fix and exits with status 2, as other fatal errors do: a
restart policy (Kubernetes, systemd, `docker run --restart`) then starts it again
and the cluster resumes from its last snapshot. The exit is immediate
(`os._exit`): a stalled worker can neither finish nor be joined.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable

from bytewax_fraud.errors import ClusterStalled, SettingsError
from bytewax_fraud.process import fatal
from bytewax_fraud.process.progress import Progress

#: Exit status of a process the watchdog stops (the same as other fatal errors).
EXIT_STATUS = 2

#: The timeout must leave this many epoch intervals between two completions.
MIN_EPOCHS_PER_TIMEOUT = 3

#: FRAUD_STALL_TIMEOUT when unset (raised to MIN_EPOCHS_PER_TIMEOUT epochs when longer).
#: A healthy job completes an epoch every epoch interval (5 s with the default
#: snapshot interval, 10 s without recovery), a little later when a batch is slow;
#: see docs/operations.md for the gaps measured.
DEFAULT_TIMEOUT = 60.0


def stall_reason(progress: Progress, timeout: float) -> str | None:
    """The one-line cause and fix when no epoch completed for `timeout` s, else None."""
    age = progress.view().age
    if timeout <= 0 or age is None or age < timeout:
        return None
    error = ClusterStalled(
        f"no epoch completed for {age:.0f} s (FRAUD_STALL_TIMEOUT={timeout:g} s); a peer of"
        " the cluster may be unreachable (network partition) or hung, or a step of this process"
        " hangs. Fix: check that every process runs and that they reach each other on their -a"
        " addresses (`py-spy dump --pid PID` shows a hung step), then restart them all: the job"
        " resumes from its last snapshot (FRAUD_STALL_EXIT=false keeps the process up with"
        " /livez failing instead)"
    )
    return f"{type(error).__name__}: {error}"


def effective_timeout(timeout: float | None, epoch_seconds: float) -> float:
    """FRAUD_STALL_TIMEOUT, or its default for this epoch interval when unset.

    Raises:
        SettingsError: A set timeout is under MIN_EPOCHS_PER_TIMEOUT epoch intervals.
    """
    if timeout is None:
        return max(DEFAULT_TIMEOUT, MIN_EPOCHS_PER_TIMEOUT * epoch_seconds)
    if 0 < timeout < MIN_EPOCHS_PER_TIMEOUT * epoch_seconds:
        raise SettingsError(
            f"FRAUD_STALL_TIMEOUT={timeout:g} s is under {MIN_EPOCHS_PER_TIMEOUT} epoch intervals"
            f" ({epoch_seconds:g} s each): a healthy job would be declared stalled. Fix: raise"
            f" FRAUD_STALL_TIMEOUT to at least {MIN_EPOCHS_PER_TIMEOUT * epoch_seconds:g} s, or"
            " lower the snapshot interval (FRAUD_SNAPSHOT_INTERVAL, or bytewax.run's -s)"
        )
    return timeout


class Watchdog:
    """A daemon thread that acts once the epoch signal is older than the timeout."""

    def __init__(
        self,
        progress: Progress,
        timeout: float,
        exit_on_stall: bool,
        stop: Callable[[str], None] | None = None,
    ) -> None:
        """Watch `progress`; on a stall call `stop(line)` (default: print it and exit 2)."""
        self.progress = progress
        self.timeout = timeout
        self.exit_on_stall = exit_on_stall
        self._stop = stop or _exit
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fraud-watchdog", daemon=True)

    def reason(self) -> str | None:
        """Why the process is not live (the ClusterStalled line), or None: what /livez serves."""
        return stall_reason(self.progress, self.timeout)

    def start(self) -> Watchdog:
        """Start checking (a few times per timeout)."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop checking (tests)."""
        self._halt.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        reported = False
        period = min(1.0, self.timeout / 10)
        while not self._halt.wait(period):
            line = self.reason()
            if line is None:
                if reported:
                    print("[fraud] epochs complete again: /livez is OK", file=sys.stderr)
                reported = False
                continue
            if self.exit_on_stall:
                self._stop(line)
                return
            if not reported:
                print(f"warning: {line}; /livez fails meanwhile", file=sys.stderr, flush=True)
                reported = True


def _exit(line: str) -> None:
    fatal.exit_now(line, EXIT_STATUS)


def start_watchdog(
    progress: Progress,
    timeout: float | None,
    exit_on_stall: bool,
    epoch_seconds: float,
    stop: Callable[[str], None] | None = None,
) -> Watchdog | None:
    """Start watching `progress` (None when FRAUD_STALL_TIMEOUT=0 turns it off).

    Args:
        progress: The job's epoch signal.
        timeout: FRAUD_STALL_TIMEOUT (None: the default for `epoch_seconds`).
        exit_on_stall: FRAUD_STALL_EXIT.
        epoch_seconds: The run's epoch interval.
        stop: Ends the process with the stall's line (default: print it, exit 2).

    Raises:
        SettingsError: The timeout is too short for the epoch interval.
    """
    seconds = effective_timeout(timeout, epoch_seconds)
    if seconds <= 0:
        return None
    return Watchdog(progress, seconds, exit_on_stall, stop).start()
