"""Event time you can trust: a partition clock that outliers cannot drag, and admission.

Pure logic over numpy arrays; the scorer owns one `PartitionClock` per state
partition and persists it with the user records (see docs/event-time.md).

- The **partition clock** is the `rank`-th largest event time the partition has
  admitted (undefined until `rank` events are admitted). Fewer than `rank`
  events, whatever their timestamps, cannot move it; a real, steady advance of
  event time moves it along (it lags the newest event by `rank` events).
- An event is **too far ahead** (`TimestampTooFarAhead`) when it is more than
  `max_future_skew` ahead of the source's own timestamp of the record (Kafka's
  record timestamp) and of the partition clock. A record without a source
  timestamp is not checked: the partition clock alone, which trails the newest
  events, is no reference for how far ahead an event may be (sparse partitions
  would reject their own steady advance), and it cannot be dragged anyway.
- An event is **too late** (`TimestampTooLate`) when it is more than
  `allowed_lateness` behind the partition clock, or behind its user's last
  event (checked by the scorer, which holds the user's record).

Admission is a function of the partition's events in offset order only, never of
how they were cut into batches or of the wall clock, so a resumed run decides
exactly as a clean one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

#: Admitted events the clock needs before it is defined, and that it lags behind.
CLOCK_RANK = 100
#: Store key of a partition's clock (the `rank` largest admitted event times).
CLOCK_KEY = b"m:event_clock"

STAGE = "event_time"
TOO_FAR_AHEAD = "TimestampTooFarAhead"
TOO_LATE = "TimestampTooLate"

ADMITTED = 0
AHEAD = 1
LATE = 2

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class TimePolicy:
    """How far an event may stray from the partition's event time.

    Attributes:
        max_future_skew: Seconds an event may be ahead of its reference clock.
        allowed_lateness: Seconds an event may be behind the partition clock or
            its user's last event.
        rank: Admitted events that define the partition clock (see module doc).
    """

    max_future_skew: float = 3600.0
    allowed_lateness: float = 86400.0
    rank: int = CLOCK_RANK


class PartitionClock:
    """The `rank` largest admitted event times of one partition; `now` is the smallest of them."""

    def __init__(self, rank: int = CLOCK_RANK, top: F64 | None = None) -> None:
        self.rank = rank
        top = np.empty(0, np.float64) if top is None else np.asarray(top, np.float64)
        self._top = np.sort(top)[-rank:] if len(top) > rank else top.copy()

    @property
    def now(self) -> float:
        """The partition's event time (epoch s), or -inf before `rank` events were admitted."""
        return float(self._top.min()) if len(self._top) >= self.rank else -math.inf

    @property
    def newest(self) -> float:
        """The largest admitted event time (-inf before the first)."""
        return float(self._top.max()) if len(self._top) else -math.inf

    def to_bytes(self) -> bytes:
        """The persisted form: little-endian float64s, ascending.

        Sorted, so that it depends only on the set: the order `np.partition` leaves
        differs between numpy builds (2.4's SIMD selection on this machine), and
        between the batch shapes that built the same set.
        """
        return np.sort(self._top).astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | None, rank: int = CLOCK_RANK) -> PartitionClock:
        """The clock stored by `to_bytes` (None: a partition that admitted nothing yet)."""
        if not data:
            return cls(rank)
        return cls(rank, np.frombuffer(data, "<f8").astype(np.float64))

    def add(self, ts: F64) -> None:
        """Admit event times (in any order: the clock depends only on the set)."""
        if len(ts) == 0:
            return
        both = np.concatenate([self._top, ts])
        k = len(both) - self.rank
        self._top = np.partition(both, k)[k:] if k > 0 else both

    def admit(
        self, ts: F64, source_ts: F64 | None, policy: TimePolicy
    ) -> tuple[npt.NDArray[np.int8], list[str]]:
        """Decide each event, in order, and admit the ones that pass.

        Args:
            ts: Event times, in the partition's offset order.
            source_ts: The source's timestamps of the same records (NaN where
                missing; None: the source has none).
            policy: The bounds.

        Returns:
            Per event `ADMITTED`, `AHEAD` or `LATE`, and the reasons of the
            rejected ones, in order.
        """
        n = len(ts)
        verdict = np.zeros(n, np.int8)
        reasons: list[str] = []
        # The clock only moves forward, so an event that passes the ahead check
        # against today's clock passes it for sure, and one that passes the lateness
        # check against the largest clock this batch could reach (everything
        # admitted) passes it for sure too. Only the rest (rare) are decided one by
        # one, against the clock exactly at their offset.
        upper = PartitionClock(self.rank, self._top)
        upper.add(ts)
        suspect = ts < upper.now - policy.allowed_lateness
        if source_ts is not None:  # a record without one (NaN) is never ahead
            ref = np.where(np.isnan(source_ts), np.inf, np.fmax(source_ts, self.now))
            suspect |= ts > ref + policy.max_future_skew
        if not suspect.any():
            self._top = upper._top
            return verdict, reasons
        start = 0
        for j in np.flatnonzero(suspect).tolist():
            self.add(ts[start:j])
            start = j + 1
            clock = self.now
            src = math.nan if source_ts is None else float(source_ts[j])
            t = float(ts[j])
            if not math.isnan(src) and t > max(clock, src) + policy.max_future_skew:
                verdict[j] = AHEAD
                reasons.append(too_far_ahead_reason(t, clock, src, policy.max_future_skew))
            elif clock != -math.inf and t < clock - policy.allowed_lateness:
                verdict[j] = LATE
                reasons.append(behind_clock_reason(t, clock, policy.allowed_lateness))
            else:
                self.add(ts[j : j + 1])
        self.add(ts[start:])
        return verdict, reasons


def iso(ts: float) -> str:
    """An epoch time as ISO-8601 UTC (seconds precision)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def span(seconds: float) -> str:
    """A duration for humans: 42 s, 5.0 min, 3.5 h, 2.0 days, 64.1 years."""
    s = abs(seconds)
    if s >= 2 * 365.25 * 86400:
        return f"{s / (365.25 * 86400):,.1f} years"
    if s >= 2 * 86400:
        return f"{s / 86400:,.1f} days"
    if s >= 2 * 3600:
        return f"{s / 3600:.1f} h"
    if s >= 120:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"


def too_far_ahead_reason(t: float, clock: float, source_ts: float, skew: float) -> str:
    """Why an event is too far ahead (names the reference and the fix)."""
    if not math.isnan(source_ts) and source_ts >= clock:
        ref, what = source_ts, "the record's source timestamp"
    else:
        ref, what = clock, "the partition's event-time clock"
    return (
        f"timestamp {iso(t)} is {span(t - ref)} ahead of {what} ({iso(ref)}), more than"
        f" FRAUD_MAX_FUTURE_SKEW={span(skew)}: fix the clock of the device or producer that"
        " stamped it, or raise FRAUD_MAX_FUTURE_SKEW"
    )


def behind_clock_reason(t: float, clock: float, lateness: float) -> str:
    """Why an event is too far behind the partition clock."""
    return (
        f"timestamp {iso(t)} is {span(clock - t)} behind the partition's event-time clock"
        f" ({iso(clock)}), more than FRAUD_ALLOWED_LATENESS={span(lateness)}: send late"
        " events sooner, or raise FRAUD_ALLOWED_LATENESS"
    )


def behind_user_reason(t: float, last: float, lateness: float) -> str:
    """Why an event is too far behind its user's last event."""
    return (
        f"timestamp {iso(t)} is {span(last - t)} before this user's last event ({iso(last)}),"
        f" more than FRAUD_ALLOWED_LATENESS={span(lateness)}: send late events sooner,"
        " or raise FRAUD_ALLOWED_LATENESS"
    )
