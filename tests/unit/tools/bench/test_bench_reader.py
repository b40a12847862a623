"""The outside reader's latency: each received message joined to its event's produce stamp."""

from __future__ import annotations

import os
import time

import numpy as np

from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.tools.bench.reader import (
    VARIANTS,
    cores_between,
    counted,
    format_cores,
    format_reader,
    format_segments,
    segments_ms,
    warm_up,
)
from bytewax_fraud.tools.bench.runner import cpu_seconds
from bytewax_fraud.tools.local_broker import Broker


def test_each_message_is_joined_to_its_own_stamp_by_partition_and_offset() -> None:
    keys: list[bytes | None] = [f"u{i}".encode() for i in range(40)]
    pilot = 10
    stamps = [100.0 + i for i in range(30)]  # one second apart, after the pilot
    parts = [partition_for(k.decode(), 3) for k in keys if k]
    offsets, seen = [], [0, 0, 0]
    for p in parts:
        offsets.append(seen[p])
        seen[p] += 1
    # Message i is received 5 ms + i µs after its stamp, in reverse order of sending.
    rows = np.asarray(
        [(parts[i], offsets[i], stamps[i - pilot] + 0.005 + i * 1e-6) for i in range(39, -1, -1)]
    )
    got, at = counted(keys, stamps, rows, 3, pilot, warmup_s=2.0)
    lat = (got[:, 2] - at) * 1000.0
    # The pilot is not counted, nor the events stamped in the first 2 s.
    want = sorted(5.0 + i * 1e-3 for i in range(pilot + 2, 40))
    assert np.allclose(sorted(lat), want)


def test_the_report_names_each_variant_and_its_margin_over_the_broker() -> None:
    point = {"offered_per_s": 10.0, "counted": 5, "p50_ms": 1.0, "p999_ms": 3.0, "load": 0.5}
    reader = {
        "max_events_per_s": 20.0,
        "commit_interval_s": 1.0,
        "points": [
            {**point, "variant": "broker", "p99_ms": 2.0},
            {**point, "variant": "alo", "p99_ms": 9.5},
        ],
        "p99_over_broker_ms": {"50%": {"alo": 7.5}},
    }
    text = "\n".join(format_reader(reader))
    assert "alo +7.5 ms" in text and "broker" in text


class _CompilingBroker(Broker):
    """A broker whose JIT compilers use `shares[i]` of a core during warm-up round i."""

    def __init__(self, shares: list[float]) -> None:
        super().__init__("127.0.0.1:9")
        self.shares = shares
        self.cpu = 0.0
        self.rounds = 0

    def jit_cpu_seconds(self) -> float | None:
        return self.cpu

    def run(self, _variant: str) -> None:  # one warm-up point: 20 ms of wall time
        share = self.shares[min(self.rounds // 2, len(self.shares) - 1)]
        time.sleep(0.02)
        self.cpu += share * 0.02
        self.rounds += 1


def test_warm_up_repeats_until_the_brokers_jit_has_settled() -> None:
    broker = _CompilingBroker([0.5, 0.3, 0.01, 0.5])
    got = warm_up(broker, broker.run, VARIANTS, settled=0.02, max_s=60)
    assert got["rounds"] == 3 and broker.rounds == 6  # the broker alone and alo, 3 times
    assert got["jit_share"] < 0.02 and "settled" in got["text"]


def test_warm_up_gives_up_after_its_time_and_says_so() -> None:
    broker = _CompilingBroker([0.5])
    got = warm_up(broker, broker.run, ("broker", "eos"), settled=0.02, max_s=0.1)
    assert 2 <= got["rounds"] <= 4 and "still compiling after 0 s" in got["text"]


def test_warm_up_runs_one_round_where_the_broker_is_not_ours() -> None:
    runs: list[str] = []
    got = warm_up(Broker("127.0.0.1:9"), runs.append, VARIANTS, settled=0.02, max_s=60)
    assert runs == ["broker", "alo"] and got["jit_share"] is None
    assert "cannot be watched" in got["text"]


def test_a_predictions_time_is_split_into_parts_that_add_up() -> None:
    # Produced at 100.000 s, read by the job 6 ms later, its line built 2 ms after that,
    # produced by the job at 100.009 (CreateTime), received at 100.013.
    rows = np.array([[0, 0, 100.013, 100.009, 2.0]] * 4, np.float64)
    rows[:, 1] = np.arange(4)
    at = np.full(4, 100.0)
    seg = segments_ms(rows, at)
    assert seg == {"to_job": [7.0, 7.0], "in_job": [2.0, 2.0], "to_reader": [4.0, 4.0]}
    assert sum(p50 for p50, _ in seg.values()) == round((100.013 - 100.0) * 1000, 1)
    assert segments_ms(np.column_stack([rows[:, :4], np.full(4, np.nan)]), at) == {
        "to_reader": [4.0, 4.0]
    }
    assert "in the job 2.0/2.0" in format_segments(seg)


def test_each_points_cores_are_cpu_seconds_over_the_paced_window() -> None:
    before = {"producer": 1.0, "job": 10.0, "broker": 5.0, "wall": 100.0}
    after = {"producer": 1.5, "job": 11.8, "broker": 5.8, "wall": 102.0}  # the reader had ended
    cores = cores_between(before, after)
    assert cores == {"producer": 0.25, "job": 0.9, "broker": 0.4, "all": 1.55}
    assert format_cores(cores).endswith("all 1.55")
    own = cpu_seconds(os.getpid())
    assert own is not None and own > 0.0 and cpu_seconds(2**22 + 1) is None  # no such pid
