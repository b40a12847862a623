"""When the cluster last completed an epoch, as one process sees it: the watchdog's signal.

Bytewax advances an input partition to its next epoch, calling the partition's
`snapshot()`, only once the epoch interval has passed *and* every worker of the
cluster has finished the previous epoch (its probe, which follows the outputs and,
with recovery, the snapshot writes). So each call witnesses progress of the whole
cluster, and calls keep coming every epoch interval when no event arrives: an idle
job advances, a cluster with an unreachable or hung peer does not, whatever the
input rate. `connectors.epochs.EpochSignal` reports those calls here.

A process is watched from the moment its first input partition is built (after
Bytewax has loaded the snapshots of a resume) until every one of its partitions has
ended: once its input ended there is no signal left to watch, and the process only
waits for its peers to finish.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressView:
    """A consistent copy of a `Progress` at one moment."""

    #: Seconds since an epoch last completed (or since the first partition was built);
    #: None while the process is not watched (no open input partition).
    age: float | None
    #: Epoch completions seen (one per input partition per epoch).
    epochs: int
    #: Longest wait between two completions so far, in seconds.
    longest_gap: float


class Progress:
    """Epoch completions of this process's input partitions, with an injected clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Measure ages with `clock` (monotonic seconds by default)."""
        self._clock = clock
        self._lock = threading.Lock()
        self._open = 0
        self._last: float | None = None
        self._epochs = 0
        self._longest = 0.0

    def opened(self) -> None:
        """An input partition was built: from now on this process is watched."""
        with self._lock:
            self._open += 1
            if self._last is None:
                self._last = self._clock()

    def ended(self) -> None:
        """An input partition ended (end of input, or a graceful stop)."""
        with self._lock:
            self._open = max(self._open - 1, 0)

    def epoch_completed(self) -> None:
        """An input partition advanced its epoch: the cluster completed the previous one."""
        with self._lock:
            now = self._clock()
            if self._last is not None:
                self._longest = max(self._longest, now - self._last)
            self._last = now
            self._epochs += 1

    def view(self) -> ProgressView:
        """The age of the last completion, the count and the longest gap."""
        with self._lock:
            watched = self._open > 0 and self._last is not None
            age = self._clock() - self._last if watched and self._last is not None else None
            return ProgressView(age, self._epochs, self._longest)
