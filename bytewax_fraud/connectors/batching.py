"""When a source should hand over a batch: at `batch_max` items or at a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class DeadlineBatcher:
    """Decides how many pending items to emit now.

    A batch is emitted as soon as `batch_max` items are pending, or when the
    oldest pending item has waited `timeout_s`, so batches are large under load
    and latency stays bounded at low rates.
    """

    batch_max: int
    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    _since: float | None = field(default=None, init=False)

    def take(self, pending: int) -> int:
        """How many of `pending` items to emit now (0: keep waiting)."""
        if pending <= 0:
            self._since = None
            return 0
        now = self.clock()
        if self._since is None:
            self._since = now
        if pending >= self.batch_max or now - self._since >= self.timeout_s:
            self._since = None if pending <= self.batch_max else now
            return min(pending, self.batch_max)
        return 0

    def deadline(self) -> float | None:
        """Monotonic time at which pending items must go out, if any are pending."""
        return None if self._since is None else self._since + self.timeout_s
