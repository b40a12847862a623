"""Run statistics for the status line, the end-of-run summary and the benchmark.

One `RunStats` per process, updated by the scoring steps (any worker thread).
Latencies go into a fixed log-spaced histogram so percentiles cost O(bins).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

import numpy as np

from bytewax_fraud.label_quality import LabelQuality

# 1 µs .. ~1000 s, 40 bins per decade.
_EDGES = np.logspace(-3, 6, 361)


def _percentile(hist: np.ndarray, q: float) -> float:
    total = hist.sum()
    if total == 0:
        return float("nan")
    i = int(np.searchsorted(np.cumsum(hist), q * total))
    return float(_EDGES[min(i + 1, len(_EDGES) - 1)])


#: Upper bounds of the Prometheus-style histograms (a final +Inf bucket is implied).
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
INFERENCE_BUCKETS: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1)
SNAPSHOT_BUCKETS: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1, 3, 10)
#: End-to-end latency buckets, in seconds.
LATENCY_BUCKETS: tuple[float, ...] = (1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)
#: Predicted-probability buckets: fine near 0 (most traffic) and around the usual thresholds.
SCORE_BUCKETS: tuple[float, ...] = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.3,
    0.5,
    0.7,
    0.8,
    0.9,
    0.95,
    0.99,
)


@dataclass
class Histogram:
    """Counts per bucket (upper bounds `bounds`, then +Inf), their sum and count."""

    bounds: tuple[float, ...]
    counts: np.ndarray = field(init=False)
    sum: float = 0.0
    _edges: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.bounds) + 1, np.int64)
        self._edges = np.asarray(self.bounds, np.float64)  # not converted again on every call

    def observe(self, values: np.ndarray | list[float]) -> None:
        """Add observations (the caller holds the stats lock)."""
        self.observe_many([values])

    def observe_many(self, batches: Sequence[np.ndarray | list[float]]) -> None:
        """Add several batches of observations at once, as `observe` would one by one.

        The counts are added in one pass; the sum takes each batch's sum in turn, so it
        is the same float, bit for bit.
        """
        arrays = [np.asarray(b, dtype=np.float64) for b in batches]
        arrays = [v for v in arrays if v.size]
        if not arrays:
            return
        v = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        np.add.at(self.counts, np.searchsorted(self._edges, v, side="left"), 1)
        for a in arrays:
            self.sum += float(a.sum())

    @property
    def count(self) -> int:
        """Number of observations."""
        return int(self.counts.sum())


@dataclass
class _Window:
    events: int = 0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(len(_EDGES) - 1, np.int64))


@dataclass(frozen=True, slots=True)
class _Scored:
    """A scored batch's figures, kept until `RunStats.settle` adds them to the histograms."""

    size: int  # events in the batch, replays included
    latencies_ms: np.ndarray  # of the timed events (replays left out)
    inference_seconds: list[float]
    scores: dict[str, np.ndarray]
    score_labels: dict[str, np.ndarray]


@dataclass
class RunStats:
    """Counters of one process."""

    model: str = "-"
    scored: int = 0
    replayed: int = 0
    expired: int = 0
    swept: int = 0
    #: User records found in the partitions' record caches, and read from the store instead.
    cache_hits: int = 0
    cache_misses: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    #: Messages a sink could not deliver (the run then fails, and recovery replays them).
    delivery_failures: int = 0
    #: Input messages deleted before they were read, skipped with FRAUD_ON_DATA_LOSS=skip.
    input_lost: Counter[int] = field(default_factory=Counter)
    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    threshold: float = 0.5
    rollout: float = 0.0
    #: Per model serving now (id@sha256 prefix): "" when a user's run of events goes through
    #: it in one call, else why it is served in waves (no sequence form).
    batch_shapes: dict[str, str] = field(default_factory=dict)
    #: Model calls that took users' runs of more than one event.
    sequence_calls: int = 0
    #: Class of the fatal error that stopped the run (set by `fatal.report`), else None.
    failed: str | None = None
    batch_sizes: Histogram = field(default_factory=lambda: Histogram(BATCH_BUCKETS))
    inference_seconds: Histogram = field(default_factory=lambda: Histogram(INFERENCE_BUCKETS))
    snapshot_seconds: Histogram = field(default_factory=lambda: Histogram(SNAPSHOT_BUCKETS))
    latency_seconds: Histogram = field(default_factory=lambda: Histogram(LATENCY_BUCKETS))
    partition_keys: dict[int, int] = field(default_factory=dict)
    partition_expired: Counter[int] = field(default_factory=Counter)
    #: Predicted probabilities of freshly scored events, per model label (id@sha256 prefix).
    scores: dict[str, Histogram] = field(default_factory=dict)
    #: Scores of freshly scored labelled events against their labels, per model label.
    quality: dict[str, LabelQuality] = field(default_factory=dict)
    #: Per input partition: (next offset to read, offset one past the last available).
    inputs: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Per state partition: (wall-clock end, duration in s) of its last completed snapshot.
    last_snapshot: dict[int, tuple[float, float]] = field(default_factory=dict)
    #: Per state partition: bytes its store takes on disk (measured at each snapshot).
    partition_bytes: dict[int, int] = field(default_factory=dict)
    #: Events scored although older than their user's last event (within the lateness).
    late_accepted: int = 0
    #: Each partition's event-time clock, epoch s (absent until defined; event_time.py):
    #: its event-time watermark, robust to a few outlying timestamps.
    event_clock: dict[int, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    #: (monotonic s, process CPU s) when the first and the latest batch were counted: what
    #: the process (all its threads) spent while it scored, without its start-up.
    scoring_from: tuple[float, float] | None = None
    scoring_to: tuple[float, float] | None = None
    total: _Window = field(default_factory=_Window)
    interval: _Window = field(default_factory=_Window)
    interval_started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Scored batches whose histogram figures are not added up yet (see `record_scored`).
    _pending: list[_Scored] = field(default_factory=list, repr=False)
    #: How many scored batches are gathered before they are added up (1: each at once).
    settle_every: int = 32

    def record_scored(
        self,
        latencies_ms: np.ndarray,
        probabilities: np.ndarray,
        labels: np.ndarray,
        replayed: int,
        expired: int,
        partition: int = 0,
        inference_seconds: list[float] | None = None,
        scores: dict[str, np.ndarray] | None = None,
        score_labels: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Count a scored batch (replayed events carry NaN latency and are not timed).

        `scores` holds the probabilities of the freshly scored events per model label,
        `score_labels` their labels (-1: none). The counters are updated at once; the
        histograms (latency, batch size, inference time, scores, label quality) are
        added up `settle_every` batches at a time: at low rates a worker scores ~600
        batches of a few events a second, and each histogram update costs about the same
        for 5 events as for 500. Every reader calls `settle` first, so what it reads is
        exact and up to date. The arrays are kept until then, not copied: a caller must
        not change them afterwards (the scorer makes new ones for every batch).
        """
        labelled = (labels >= 0) & ~np.isnan(probabilities)
        flagged = probabilities >= self.threshold
        fraud = (labels == 1) & labelled
        batch = _Scored(
            len(latencies_ms),
            latencies_ms[~np.isnan(latencies_ms)],
            inference_seconds or [],
            scores or {},
            score_labels or {},
        )
        mark = (time.monotonic(), time.process_time())  # ~0.7 us: per call, not per event
        with self.lock:
            if self.scoring_from is None:
                self.scoring_from = mark
            self.scoring_to = mark
            self.scored += len(latencies_ms)
            self.replayed += replayed
            self.expired += expired
            if expired:
                self.partition_expired[partition] += expired
            for w in (self.total, self.interval):
                w.events += len(latencies_ms)
            self.true_pos += int(np.count_nonzero(flagged & fraud))
            self.false_pos += int(np.count_nonzero(flagged & labelled & ~fraud))
            self.false_neg += int(np.count_nonzero(~flagged & fraud))
            self._pending.append(batch)
            if len(self._pending) >= self.settle_every:
                self.settle()

    def settle(self) -> None:
        """Add the gathered scored batches to the histograms (the caller holds the lock)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        self.batch_sizes.observe([float(b.size) for b in pending])
        self.inference_seconds.observe_many([b.inference_seconds for b in pending])
        lat = [b.latencies_ms for b in pending]
        self.latency_seconds.observe_many([x / 1000.0 for x in lat])
        all_lat = lat[0] if len(lat) == 1 else np.concatenate(lat)
        # Same bins as np.histogram(lat, _EDGES), without its per-call overhead.
        bins = np.searchsorted(
            _EDGES, np.minimum(np.maximum(all_lat, 1.001e-3), 9.99e5), side="right"
        )
        bins -= 1
        counts = np.bincount(bins, minlength=len(_EDGES) - 1)
        for w in (self.total, self.interval):
            w.hist += counts
        by_label: dict[str, list[np.ndarray]] = {}
        for b in pending:
            for label, probs in b.scores.items():
                by_label.setdefault(label, []).append(probs)
        for label, batches in by_label.items():
            h_score = self.scores.get(label)
            if h_score is None:
                h_score = self.scores[label] = Histogram(SCORE_BUCKETS)
            h_score.observe_many(batches)
        for b in pending:
            for label, labels in b.score_labels.items():
                if np.any(labels >= 0):
                    q = self.quality.get(label)
                    if q is None:
                        q = self.quality[label] = LabelQuality(self.threshold)
                    q.update(b.scores[label], labels)

    def record_event_time(self, partition: int, clock: float, late_accepted: int) -> None:
        """A partition's event-time clock after a batch, and its late events scored."""
        with self.lock:
            if clock != float("-inf"):
                self.event_clock[partition] = clock
            self.late_accepted += late_accepted

    def rejected(self) -> dict[str, int]:
        """Dead letters of the input checks: too late, too early (far ahead), misrouted.

        The caller holds the lock.
        """
        d = self.dead_letters
        return {
            "too_late": d["TimestampTooLate"],
            "too_early": d["TimestampTooFarAhead"],
            "misrouted": d["WrongPartition"],
        }

    def record_snapshot(
        self, partition: int, seconds: float, keys: int, disk_bytes: int | None = None
    ) -> None:
        """Count a completed partition snapshot, its stored keys (estimated) and bytes."""
        with self.lock:
            self.snapshot_seconds.observe([seconds])
            self.partition_keys[partition] = keys
            self.last_snapshot[partition] = (time.time(), seconds)
            if disk_bytes is not None:
                self.partition_bytes[partition] = disk_bytes

    def record_input(self, partition: int, position: int, end: int) -> None:
        """Note an input partition's read position and the end of what is available to it."""
        with self.lock:
            self.inputs[partition] = (position, end)

    def record_dead_letters(self, reasons: list[str]) -> None:
        """Count dead letters by error class."""
        with self.lock:
            self.dead_letters.update(reasons)

    def record_delivery_failures(self, n: int) -> None:
        """Count messages a sink failed to deliver."""
        with self.lock:
            self.delivery_failures += n

    def record_input_lost(self, partition: int, n: int) -> None:
        """Count input messages of `partition` that were gone before they were read."""
        with self.lock:
            self.input_lost[partition] += n

    def status_line(self) -> str:
        """One line: rate over the last interval, p99 latency, dead letters, model."""
        with self.lock:
            now = time.monotonic()
            self.settle()
            span = max(now - self.interval_started, 1e-9)
            rate = self.interval.events / span
            p99 = _percentile(self.interval.hist, 0.99)
            self.interval = _Window()
            self.interval_started = now
            dead = sum(self.dead_letters.values())
            r = self.rejected()
            waves = "".join(
                f" | waves for {label}: {why}" for label, why in self.batch_shapes.items() if why
            )
            return (
                f"[fraud] {rate:,.0f} ev/s | scored {self.scored:,} | p99 {p99:.1f} ms |"
                f" dead letters {dead:,} (late {r['too_late']:,}, early {r['too_early']:,},"
                f" misrouted {r['misrouted']:,}) | late scored {self.late_accepted:,} |"
                f" replayed {self.replayed:,} | model {self.model}{waves}"
            )

    def _scoring_cpu(self) -> dict[str, float]:
        """Wall and CPU seconds from the first counted batch to the latest (caller holds the lock).

        The CPU is the whole process's (the worker, librdkafka's and RocksDB's threads), so
        `scoring_cpu_s / scored` is what an event costs this process at this run's rate.
        """
        if self.scoring_from is None or self.scoring_to is None:
            return {"scoring_s": 0.0, "scoring_cpu_s": 0.0}
        (w0, c0), (w1, c1) = self.scoring_from, self.scoring_to
        return {"scoring_s": round(w1 - w0, 3), "scoring_cpu_s": round(c1 - c0, 3)}

    def summary(self) -> dict[str, object]:
        """Totals of the run so far."""
        with self.lock:
            self.settle()
            elapsed = time.monotonic() - self.started
            tp, fp, fn = self.true_pos, self.false_pos, self.false_neg
            return {
                "scored": self.scored,
                "replayed": self.replayed,
                "dead_letters": dict(self.dead_letters),
                **self.rejected(),
                "late_accepted": self.late_accepted,
                "expired": self.expired,
                "swept": self.swept,
                "cache_hits": self.cache_hits,
                "cache_misses": self.cache_misses,
                "delivery_failures": self.delivery_failures,
                "input_lost": sum(self.input_lost.values()),
                "elapsed_s": round(elapsed, 3),
                "events_per_s": round(self.scored / elapsed, 1) if elapsed > 0 else 0.0,
                **self._scoring_cpu(),
                "p50_ms": _percentile(self.total.hist, 0.50),
                "p99_ms": _percentile(self.total.hist, 0.99),
                "p999_ms": _percentile(self.total.hist, 0.999),
                "precision": round(tp / (tp + fp), 4) if tp + fp else None,
                "recall": round(tp / (tp + fn), 4) if tp + fn else None,
                "model": self.model,
                "failed": self.failed,
                "models": {label: q.get() for label, q in sorted(self.quality.items())},
            }


STATS = RunStats()
_reporter_started = False


def start_reporter(interval: float, stream: TextIO | None = None) -> None:
    """Print a status line every `interval` seconds from a daemon thread (once per process)."""
    global _reporter_started
    if interval <= 0 or _reporter_started:
        return
    _reporter_started = True
    out = stream or sys.stderr

    def loop() -> None:
        while True:
            time.sleep(interval)
            print(STATS.status_line(), file=out, flush=True)

    threading.Thread(target=loop, name="fraud-status", daemon=True).start()


def format_summary(summary: dict[str, object]) -> str:
    """The end-of-run summary as a few readable lines."""
    dl = summary["dead_letters"]
    if not summary["scored"] and not dl and not summary.get("failed"):
        return (
            "[fraud] done: nothing new to score. A bounded run that already finished resumes at"
            " its end; to start over, delete the state and recovery directories (make clean)."
        )
    verb = "done" if not summary.get("failed") else f"stopped by {summary['failed']}"
    return (
        f"[fraud] {verb}: scored {summary['scored']:,} events in {summary['elapsed_s']} s"
        f" ({summary['events_per_s']:,} ev/s); latency p50 {summary['p50_ms']:.2f} ms,"
        f" p99 {summary['p99_ms']:.2f} ms; replayed {summary['replayed']:,};"
        f" dead letters {dl or 0} (late {summary['too_late']:,}, early {summary['too_early']:,},"
        f" misrouted {summary['misrouted']:,}); late scored {summary['late_accepted']:,};"
        f" expired {summary['expired']:,};"
        f" precision@0.5 {summary['precision']}, recall@0.5 {summary['recall']};"
        f" model {summary['model']}"
        + (f"; input lost {summary['input_lost']:,}" if summary.get("input_lost") else "")
        + _format_quality(summary.get("models"))
    )


def _format_quality(models: object) -> str:
    """One line per model that scored labelled events: its PR-AUC, precision and recall."""
    if not isinstance(models, dict):
        return ""
    return "".join(
        f"\n[fraud] labels, model {label}: PR-AUC {q['pr_auc']}, precision@0.5"
        f" {q['precision']}, recall@0.5 {q['recall']} over {q['labelled']:,} labelled events"
        f" ({q['fraud']:,} fraud)"
        for label, q in models.items()
    )
