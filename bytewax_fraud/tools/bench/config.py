"""One run's settings, one variant's result, the constants the bench's modules share.

`BenchConfig` is one run's configuration (`QUICK` the smoke run's overrides),
`Result` one measured variant, `BenchError` a run that failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bytewax_fraud.errors import FraudError
from bytewax_fraud.settings import DEFAULT_MODEL, Settings

#: The checkout the jobs run from (their working directory and `PYTHONPATH`).
ROOT = Path(__file__).resolve().parents[3]
WINDOW = int(Settings.model_fields["window"].default)
TARGET_P99_MS = 20.0
#: Largest cross-user batch of the hand-written baseline.
HANDWRITTEN_BATCH = 512
#: What every variant's throughput is compared with (`x_handwritten`).
REFERENCE = "handwritten-batched"
#: The longest a variant's processes may run before they are killed.
RUN_TIMEOUT_S = 900.0


class BenchError(FraudError):
    """A benchmark run failed; the message carries the subprocess's last output."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run measures."""

    events: int = 200_000
    users: int = 20_000
    partitions: int = 4
    workers: tuple[int, ...] = (1, 2)
    model: Path = DEFAULT_MODEL
    device: str = "cpu"
    baseline_events: int = 50_000
    http_requests: int = 20_000
    loads: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75, 1.00)
    point_seconds: float = 6.0
    #: Length of each Kafka latency point (the Kafka sweep and the outside reader). A p99
    #: over a few seconds is set by the one worst stall in them: over 11 runs of 6 s points
    #: the at-least-once reader's p99 at 20 % ranged 21-63 ms. 20 s points hold enough
    #: stalls (and the broker alone as many) for the figure to repeat.
    kafka_point_seconds: float = 20.0
    warmup_s: float = 1.0
    #: The reader's warm-up points repeat until the broker's JIT compilers used less than
    #: this share of a core during one, or for at most `warmup_max_s` (0: one round).
    jit_settled: float = 0.02
    warmup_max_s: float = 300.0
    seed: int = 0
    threads_variant: bool = True
    skip_http: bool = False
    skip_kafka: bool = False
    #: Offered loads of the Kafka sweep (end-to-end latency through both topics).
    kafka_loads: tuple[float, ...] = (0.50,)
    #: Offered loads of the outside reader's view (`reader`): a fifth and half.
    reader_loads: tuple[float, ...] = (0.20, 0.50)


@dataclass
class Result:
    """One measured variant."""

    name: str
    events: int
    events_per_s: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    peak_rss_mb: float
    offered_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


#: The smoke run's settings (`--quick`).
QUICK = {
    "events": 20_000,
    "users": 2_000,
    "baseline_events": 5_000,
    "http_requests": 2_000,
    "loads": (0.5, 1.0),
    "point_seconds": 1.0,
    "kafka_point_seconds": 1.0,
    "warmup_s": 0.25,
    "warmup_max_s": 0.0,
    "reader_loads": (0.5,),
}
