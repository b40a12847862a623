"""Prometheus metrics of the job, read from `status.STATS` at scrape time.

There is no second set of counters: a custom collector takes the stats lock,
copies what the scoring steps already count, and turns it into metric
families. The endpoint uses its own registry, so it never clashes with what
Bytewax or a library registers on `prometheus_client`'s default registry (and
Bytewax's own dataflow API, `BYTEWAX_DATAFLOW_API_ENABLED`, serves that default
registry on another port, 3030).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.status import STATS, Histogram, RunStats


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs ending with +Inf, as Prometheus expects."""
    cumulative = h.counts.cumsum().tolist()
    bounds = [repr(float(b)) for b in h.bounds] + ["+Inf"]
    return list(zip(bounds, cumulative, strict=True))


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=_buckets(h), sum_value=h.sum)


def _per_partition(name: str, doc: str, values: dict[int, float]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["partition"])
    for p, v in sorted(values.items()):
        g.add_metric([str(p)], v)
    return g


class StatsCollector(Collector):
    """Exports one `RunStats` (the process's `STATS` by default) as `fraud_*` metrics."""

    def __init__(self, stats: RunStats = STATS, clock: Callable[[], float] = time.time) -> None:
        """Read from `stats` at every scrape; ages are measured with `clock` (epoch s)."""
        self._stats = stats
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from one consistent copy of the stats."""
        s = self._stats
        with s.lock:
            scored = s.scored
            dead = dict(s.dead_letters)
            values = {
                "replayed": s.replayed,
                "expired": s.expired,
                "swept": s.swept,
                "cache_hits": s.cache_hits,
                "cache_misses": s.cache_misses,
                "delivery_failures": s.delivery_failures,
                "late_accepted": s.late_accepted,
            }
            model, rollout = s.model, s.rollout
            shapes, sequence_calls = dict(s.batch_shapes), s.sequence_calls
            hists = [
                _histogram(
                    "fraud_batch_size",
                    "Events per scored batch (one stateful-step call of one partition)",
                    s.batch_sizes,
                ),
                _histogram(
                    "fraud_inference_seconds",
                    "Duration of one model call (one run length or one wave of a batch), in s",
                    s.inference_seconds,
                ),
                _histogram(
                    "fraud_latency_seconds",
                    "End to end: source hands the event over -> prediction built, in seconds",
                    s.latency_seconds,
                ),
                _histogram(
                    "fraud_snapshot_seconds",
                    "Duration of one partition snapshot (WAL sync and outbox pruning), in seconds",
                    s.snapshot_seconds,
                ),
            ]
            keys = dict(s.partition_keys)
            part_expired = dict(s.partition_expired)
            input_lost = dict(s.input_lost)
            scores = [(label, _buckets(h), h.sum) for label, h in sorted(s.scores.items())]
            watermarks = dict(s.event_clock)
            inputs = dict(s.inputs)
            last_snapshot = dict(s.last_snapshot)
            disk = dict(s.partition_bytes)
        now = self._clock()

        events_in = CounterMetricFamily(
            "fraud_events_in", "Input messages handled: scored events plus dead letters"
        )
        events_in.add_metric([], scored + sum(dead.values()))
        yield events_in
        events_out = CounterMetricFamily(
            "fraud_events_out", "Predictions emitted (replayed events included)"
        )
        events_out.add_metric([], scored)
        yield events_out
        dead_letters = CounterMetricFamily(
            "fraud_dead_letters", "Input messages rejected, by error class", labels=["reason"]
        )
        for reason, n in sorted(dead.items()):
            dead_letters.add_metric([reason], n)
        yield dead_letters
        for name, doc in (
            ("replayed", "Events seen again after a resume (fenced, not applied twice)"),
            ("expired", "Users whose state had passed the TTL when their next event came"),
            ("swept", "Expired user records deleted by the TTL sweep"),
            ("cache_hits", "User records found in memory (FRAUD_STATE_CACHE_MB)"),
            ("cache_misses", "User records read from RocksDB (not in memory, or new users)"),
            ("delivery_failures", "Messages a producer could not deliver (the run then fails)"),
            (
                "late_accepted",
                "Events scored although older than their user's last event (within the"
                " allowed lateness); rejected ones are dead letters TimestampTooLate",
            ),
        ):
            c = CounterMetricFamily(f"fraud_{name}", doc)
            c.add_metric([], values[name])
            yield c
        yield from hists
        state_keys = GaugeMetricFamily(
            "fraud_state_keys",
            "Estimated user records in a partition's store (updated at each snapshot)",
            labels=["partition"],
        )
        for p, n in sorted(keys.items()):
            state_keys.add_metric([str(p)], n)
        yield state_keys
        ttl = CounterMetricFamily(
            "fraud_ttl_expired",
            "TTL expiries on arrival, per state partition",
            labels=["partition"],
        )
        for p, n in sorted(part_expired.items()):
            ttl.add_metric([str(p)], n)
        yield ttl
        lost = CounterMetricFamily(
            "fraud_input_lost_messages",
            "Input messages deleted before the job read them, skipped (FRAUD_ON_DATA_LOSS=skip)",
            labels=["partition"],
        )
        for p, n in sorted(input_lost.items()):
            lost.add_metric([str(p)], n)
        yield lost
        info = InfoMetricFamily("fraud_model", "The active model (id@sha256 prefix)")
        info.add_metric([], {"model": model})
        yield info
        share = GaugeMetricFamily(
            "fraud_model_rollout", "Share of traffic scored by the candidate model (0..1)"
        )
        share.add_metric([], rollout)
        yield share
        runs = GaugeMetricFamily(
            "fraud_model_sequence_form",
            "1 when a user's run of events in a batch goes through the model in one call (its"
            " sequence form, or a stateless model); 0 when it is served in waves",
            labels=["model"],
        )
        for label, why in sorted(shapes.items()):
            runs.add_metric([label], 0.0 if why else 1.0)
        yield runs
        calls = CounterMetricFamily(
            "fraud_sequence_calls", "Model calls that took users' runs of more than one event"
        )
        calls.add_metric([], sequence_calls)
        yield calls
        yield from _freshness(now, inputs, watermarks, last_snapshot, disk)
        probability = HistogramMetricFamily(
            "fraud_predicted_probability",
            "Predicted fraud probability of freshly scored events (replays excluded), per model",
            labels=["model"],
        )
        for label, b, total in scores:
            probability.add_metric([label], b, total)
        yield probability


def _freshness(
    now: float,
    inputs: dict[int, tuple[int, int]],
    watermarks: dict[int, float],
    last_snapshot: dict[int, tuple[float, float]],
    disk: dict[int, int],
) -> Iterator[Metric]:
    """Lag, snapshot freshness and store size, per partition."""
    yield _per_partition(
        "fraud_consumer_lag_messages",
        "Messages available to an input partition but not read yet (high-water mark - position)",
        {p: max(end - pos, 0) for p, (pos, end) in inputs.items()},
    )
    yield _per_partition(
        "fraud_input_offset",
        "Next offset an input partition will read",
        {p: pos for p, (pos, _) in inputs.items()},
    )
    yield _per_partition(
        "fraud_event_time_watermark_timestamp_seconds",
        "A state partition's event-time clock (epoch s), robust to outlying timestamps:"
        " it drives the TTL sweep and the lateness check (docs/event-time.md)",
        watermarks,
    )
    yield _per_partition(
        "fraud_event_time_lag_seconds",
        "Wall clock minus a state partition's event-time watermark, in seconds",
        {p: now - w for p, w in watermarks.items()},
    )
    yield _per_partition(
        "fraud_snapshot_age_seconds",
        "Seconds since a state partition last completed its part of a snapshot",
        {p: max(now - t, 0.0) for p, (t, _) in last_snapshot.items()},
    )
    yield _per_partition(
        "fraud_snapshot_last_duration_seconds",
        "Duration of a state partition's last snapshot, in seconds",
        {p: d for p, (_, d) in last_snapshot.items()},
    )
    yield _per_partition(
        "fraud_state_disk_bytes",
        "Bytes a state partition's RocksDB store takes on disk (SST, WAL), at its last snapshot",
        {p: float(b) for p, b in disk.items()},
    )


_lock = threading.Lock()
_started: set[int] = set()


def start_exporter(port: int | None, addr: str = "0.0.0.0", stats: RunStats = STATS) -> bool:
    """Serve `/metrics` on `port` from a daemon thread, once per process and port.

    Returns whether a server was started by this call (False when `port` is None
    or already served).

    Raises:
        SettingsError: the port cannot be bound.
    """
    if port is None:
        return False
    with _lock:
        if port in _started:
            return False
        registry = CollectorRegistry(auto_describe=False)
        registry.register(StatsCollector(stats))
        # process_resident_memory_bytes, process_cpu_seconds_total, ... (from /proc).
        ProcessCollector(registry=registry)
        try:
            start_http_server(port, addr=addr, registry=registry)
        except OSError as exc:
            raise SettingsError(
                f"FRAUD_METRICS_PORT={port}: cannot serve metrics on {addr}:{port} ({exc}). Fix:"
                " choose a free port; processes on one host each need their own port"
            ) from exc
        _started.add(port)
        return True
