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
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def _labelled(
    family: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    label: str,
    values: Mapping[Any, float],
) -> Metric:
    m = family(name, doc, labels=[label])
    for key, v in sorted(values.items()):
        m.add_metric([str(key)], v)
    return m


#: Process-wide counters: (name, help, value). Each metric is named here only.
_COUNTERS: tuple[tuple[str, str, Callable[[RunStats], float]], ...] = (
    (
        "fraud_events_in",
        "Input messages handled: scored events plus dead letters",
        lambda s: s.scored + sum(s.dead_letters.values()),
    ),
    ("fraud_events_out", "Predictions emitted (replayed events included)", lambda s: s.scored),
    (
        "fraud_replayed",
        "Events seen again after a resume (fenced, not applied twice)",
        lambda s: s.replayed,
    ),
    (
        "fraud_expired",
        "Users whose state had passed the TTL when their next event came",
        lambda s: s.expired,
    ),
    ("fraud_swept", "Expired user records deleted by the TTL sweep", lambda s: s.swept),
    (
        "fraud_cache_hits",
        "User records found in memory (FRAUD_STATE_CACHE_MB)",
        lambda s: s.cache_hits,
    ),
    (
        "fraud_cache_misses",
        "User records read from RocksDB (not in memory, or new users)",
        lambda s: s.cache_misses,
    ),
    (
        "fraud_delivery_failures",
        "Messages a producer could not deliver (the run then fails)",
        lambda s: s.delivery_failures,
    ),
    (
        "fraud_late_accepted",
        "Events scored although older than their user's last event (within the"
        " allowed lateness); rejected ones are dead letters TimestampTooLate",
        lambda s: s.late_accepted,
    ),
    (
        "fraud_sequence_calls",
        "Model calls that took users' runs of more than one event",
        lambda s: s.sequence_calls,
    ),
)

#: Histograms of the whole process: (name, help, histogram).
_HISTOGRAMS: tuple[tuple[str, str, Callable[[RunStats], Histogram]], ...] = (
    (
        "fraud_batch_size",
        "Events per scored batch (one stateful-step call of one partition)",
        lambda s: s.batch_sizes,
    ),
    (
        "fraud_inference_seconds",
        "Duration of one model call (one run length or one wave of a batch), in s",
        lambda s: s.inference_seconds,
    ),
    (
        "fraud_latency_seconds",
        "End to end: source hands the event over -> prediction built, in seconds",
        lambda s: s.latency_seconds,
    ),
    (
        "fraud_snapshot_seconds",
        "Duration of one partition snapshot (WAL sync and outbox pruning), in seconds",
        lambda s: s.snapshot_seconds,
    ),
)

_Labelled = tuple[
    type[CounterMetricFamily] | type[GaugeMetricFamily],
    str,
    str,
    str,
    Callable[[RunStats, float], Mapping[Any, float]],
]

#: Families with one label: (type, name, help, label, values by label at time `now`).
_LABELLED: tuple[_Labelled, ...] = (
    (
        CounterMetricFamily,
        "fraud_dead_letters",
        "Input messages rejected, by error class",
        "reason",
        lambda s, now: s.dead_letters,
    ),
    (
        GaugeMetricFamily,
        "fraud_state_keys",
        "Estimated user records in a partition's store (updated at each snapshot)",
        "partition",
        lambda s, now: s.partition_keys,
    ),
    (
        CounterMetricFamily,
        "fraud_ttl_expired",
        "TTL expiries on arrival, per state partition",
        "partition",
        lambda s, now: s.partition_expired,
    ),
    (
        CounterMetricFamily,
        "fraud_input_lost_messages",
        "Input messages deleted before the job read them, skipped (FRAUD_ON_DATA_LOSS=skip)",
        "partition",
        lambda s, now: s.input_lost,
    ),
    (
        GaugeMetricFamily,
        "fraud_consumer_lag_messages",
        "Messages available to an input partition but not read yet (high-water mark - position)",
        "partition",
        lambda s, now: {p: max(end - pos, 0) for p, (pos, end) in s.inputs.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_input_offset",
        "Next offset an input partition will read",
        "partition",
        lambda s, now: {p: pos for p, (pos, _) in s.inputs.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_event_time_watermark_timestamp_seconds",
        "A state partition's event-time clock (epoch s), robust to outlying timestamps:"
        " it drives the TTL sweep and the lateness check (docs/event-time.md)",
        "partition",
        lambda s, now: s.event_clock,
    ),
    (
        GaugeMetricFamily,
        "fraud_event_time_lag_seconds",
        "Wall clock minus a state partition's event-time watermark, in seconds",
        "partition",
        lambda s, now: {p: now - w for p, w in s.event_clock.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_snapshot_age_seconds",
        "Seconds since a state partition last completed its part of a snapshot",
        "partition",
        lambda s, now: {p: max(now - t, 0.0) for p, (t, _) in s.last_snapshot.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_snapshot_last_duration_seconds",
        "Duration of a state partition's last snapshot, in seconds",
        "partition",
        lambda s, now: {p: d for p, (_, d) in s.last_snapshot.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_model_sequence_form",
        "1 when a user's run of events in a batch goes through the model in one call (its"
        " sequence form, or a stateless model); 0 when it is served in waves",
        "model",
        lambda s, now: {label: 0.0 if why else 1.0 for label, why in s.batch_shapes.items()},
    ),
    (
        GaugeMetricFamily,
        "fraud_state_disk_bytes",
        "Bytes a state partition's RocksDB store takes on disk (SST, WAL), at its last snapshot",
        "partition",
        lambda s, now: {p: float(b) for p, b in s.partition_bytes.items()},
    ),
)


class StatsCollector(Collector):
    """Exports one `RunStats` (the process's `STATS` by default) as `fraud_*` metrics.

    Every metric is declared once, in the tables above, with the value it reads.
    """

    def __init__(self, stats: RunStats = STATS, clock: Callable[[], float] = time.time) -> None:
        """Read from `stats` at every scrape; ages are measured with `clock` (epoch s)."""
        self._stats = stats
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        """Build every metric family from one consistent view of the stats (under its lock)."""
        s = self._stats
        now = self._clock()
        with s.lock:
            s.settle()
            out: list[Metric] = []
            for name, doc, value in _COUNTERS:
                counter = CounterMetricFamily(name, doc)
                counter.add_metric([], value(s))
                out.append(counter)
            out += [_histogram(name, doc, h(s)) for name, doc, h in _HISTOGRAMS]
            out += [
                _labelled(f, name, doc, label, v(s, now)) for f, name, doc, label, v in _LABELLED
            ]
            info = InfoMetricFamily("fraud_model", "The active model (id@sha256 prefix)")
            info.add_metric([], {"model": s.model})
            share = GaugeMetricFamily(
                "fraud_model_rollout", "Share of traffic scored by the candidate model (0..1)"
            )
            share.add_metric([], s.rollout)
            probability = HistogramMetricFamily(
                "fraud_predicted_probability",
                "Predicted fraud probability of freshly scored events (replays excluded),"
                " per model",
                labels=["model"],
            )
            for label, h in sorted(s.scores.items()):
                probability.add_metric([label], _buckets(h), h.sum)
            out += [info, share, probability]
        return iter(out)


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
