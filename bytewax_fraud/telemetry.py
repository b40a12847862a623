"""Prometheus metrics of the job, read from `status.STATS` at scrape time.

There is no second set of counters: a custom collector takes the stats lock,
copies what the scoring steps already count, and turns it into metric
families. The endpoint uses its own registry, so it never clashes with what
Bytewax or a library registers on `prometheus_client`'s default registry (and
Bytewax's own dataflow API, `BYTEWAX_DATAFLOW_API_ENABLED`, serves that default
registry on another port, 3030).

Beside `/metrics` the same port serves `/livez`, the liveness probe: 200 while
the cluster completes epochs, 503 with the stall watchdog's one-line reason once
none completed for FRAUD_STALL_TIMEOUT (`process.watchdog`).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.process.progress import Progress
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
            hists = [
                _histogram(
                    "fraud_batch_size",
                    "Events per scored batch (one stateful-step call of one partition)",
                    s.batch_sizes,
                ),
                _histogram(
                    "fraud_inference_seconds",
                    "Duration of one model call (one wave of a batch), in seconds",
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


class ProgressCollector(Collector):
    """Exports the epoch signal the stall watchdog watches (`process.progress`)."""

    def __init__(self, progress: Progress) -> None:
        """Read `progress` at every scrape."""
        self._progress = progress

    def collect(self) -> Iterator[Metric]:
        """Epochs completed, the age of the last one and the longest gap between two."""
        view = self._progress.view()
        epochs = CounterMetricFamily(
            "fraud_epochs_completed",
            "Epochs this process's input partitions completed (one per partition per epoch;"
            " each needs the whole cluster to finish the previous epoch)",
        )
        epochs.add_metric([], view.epochs)
        yield epochs
        age = GaugeMetricFamily(
            "fraud_epoch_age_seconds",
            "Seconds since this process last saw an epoch complete (absent while it reads no"
            " input partition); /livez fails once it passes FRAUD_STALL_TIMEOUT",
        )
        if view.age is not None:
            age.add_metric([], view.age)
        yield age
        gap = GaugeMetricFamily(
            "fraud_epoch_longest_gap_seconds",
            "Longest wait between two epoch completions since the process started, in seconds"
            " (keep FRAUD_STALL_TIMEOUT well above it)",
        )
        gap.add_metric([], view.longest_gap)
        yield gap


#: Returns why the process is not live (a one-line reason), or None when it is.
Liveness = Callable[[], str | None]


def _alive() -> str | None:
    return None


def _app(registry: CollectorRegistry, liveness: Liveness) -> Callable[..., Iterable[bytes]]:
    """`/livez` answers from `liveness`; every other path serves the metrics."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/livez":
            reason = liveness()
            status = "200 OK" if reason is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(reason or "ok").encode() + b"\n"]
        return metrics(environ, start_response)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Probes and scrapes are not logged."""


def _serve(port: int, addr: str, app: Callable[..., Iterable[bytes]]) -> None:
    family, _, _, _, sockaddr = socket.getaddrinfo(
        addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(_Server):
        address_family = family

    httpd = make_server(str(sockaddr[0]), port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="fraud-metrics", daemon=True).start()


_lock = threading.Lock()
_started: set[int] = set()


def start_exporter(
    port: int | None,
    addr: str = "0.0.0.0",
    stats: RunStats = STATS,
    progress: Progress | None = None,
    liveness: Liveness = _alive,
) -> bool:
    """Serve `/metrics` and `/livez` on `port` from a daemon thread, once per process and port.

    Returns whether a server was started by this call (False when `port` is None
    or already served).

    Args:
        port: The port (None: no server).
        addr: The address to listen on (all interfaces by default).
        stats: The counters `/metrics` exports.
        progress: The epoch signal `/metrics` also exports (None: not exported).
        liveness: What `/livez` answers: None for 200, a reason for 503.

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
        if progress is not None:
            registry.register(ProgressCollector(progress))
        # process_resident_memory_bytes, process_cpu_seconds_total, ... (from /proc).
        ProcessCollector(registry=registry)
        try:
            _serve(port, addr, _app(registry, liveness))
        except OSError as exc:
            raise SettingsError(
                f"FRAUD_METRICS_PORT={port}: cannot serve metrics on {addr}:{port} ({exc}). Fix:"
                " choose a free port; processes on one host each need their own port"
            ) from exc
        _started.add(port)
        return True
