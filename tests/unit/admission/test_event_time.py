"""The partition clock and admission: robust to outliers, independent of batch cuts."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bytewax_fraud.admission.event_time import (
    ADMITTED,
    AHEAD,
    LATE,
    PartitionClock,
    TimePolicy,
)

T0 = 1_767_225_600.0
POLICY = TimePolicy(max_future_skew=3600.0, allowed_lateness=86400.0, rank=10)


def steady(n: int, step: float = 60.0, start: float = T0) -> np.ndarray:
    return start + step * np.arange(n, dtype=np.float64)


def admit_in_cuts(
    ts: np.ndarray, src: np.ndarray | None, cuts: list[int], rank: int = 10
) -> tuple[list[int], list[str], bytes]:
    clock = PartitionClock(rank)
    verdicts: list[int] = []
    reasons: list[str] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(ts)], strict=True):
        v, r = clock.admit(ts[lo:hi], None if src is None else src[lo:hi], POLICY)
        verdicts += v.tolist()
        reasons += r
    return verdicts, reasons, clock.to_bytes()


def test_undefined_until_rank_events_then_the_rank_th_largest() -> None:
    clock = PartitionClock(10)
    clock.add(steady(9))
    assert clock.now == -math.inf
    clock.add(steady(1, start=T0 + 10_000))
    assert clock.now == T0  # the 10th largest of 10
    clock.add(steady(5, start=T0 + 20_000))
    assert clock.now == T0 + 5 * 60.0


def test_fewer_than_rank_outliers_cannot_move_the_clock() -> None:
    clock = PartitionClock(10)
    clock.add(steady(100))
    before = clock.now
    clock.add(np.full(9, T0 + 64 * 365.25 * 86400))  # nine events in 2090
    assert before == T0 + 90 * 60.0
    assert clock.newest > T0 + 60 * 365.25 * 86400  # they were admitted, but
    assert clock.now <= T0 + 99 * 60.0  # the clock stays within the real events


def test_a_steady_advance_moves_the_clock_along() -> None:
    clock = PartitionClock(10)
    for day in range(30):
        clock.add(steady(100, step=864.0, start=T0 + day * 86400.0))
    assert T0 + 29 * 86400.0 < clock.now < T0 + 30 * 86400.0


def test_far_ahead_of_the_source_clock_is_rejected_and_not_admitted() -> None:
    ts = steady(50)
    src = ts.copy()
    ts[30] += 2 * 3600.0  # two hours ahead of the producer's clock
    ts[40] += 70 * 365.25 * 86400  # decades
    verdict, reasons, _ = admit_in_cuts(ts, src, [])
    assert verdict[30] == AHEAD and verdict[40] == AHEAD
    assert sum(v != ADMITTED for v in verdict) == 2
    assert "2.0 h ahead of the record's source timestamp" in reasons[0]
    assert "70.0 years ahead" in reasons[1] and "FRAUD_MAX_FUTURE_SKEW" in reasons[1]


def test_without_a_source_clock_nothing_is_too_far_ahead() -> None:
    ts = steady(50)
    ts[30] += 70 * 365.25 * 86400
    verdict, _, _ = admit_in_cuts(ts, None, [])
    assert verdict == [ADMITTED] * 50
    # ... and NaN source timestamps (records without one) are not checked either.
    verdict, _, _ = admit_in_cuts(ts, np.full(50, np.nan), [])
    assert verdict == [ADMITTED] * 50


def test_behind_the_clock_by_more_than_the_lateness_is_late_once_the_clock_is_defined() -> None:
    ts = steady(40, step=3600.0)
    ts[5] = T0 - 10 * 86400.0  # before the clock is defined: nothing to compare with
    ts[35] = T0 + 1800.0  # 24.5 h behind the clock (rank 10: the event at T0 + 25 h)
    ts[36] = T0 + 30 * 3600.0  # within a day of the clock
    verdict, reasons, _ = admit_in_cuts(ts, None, [])
    assert verdict[5] == ADMITTED and verdict[36] == ADMITTED
    assert verdict[35] == LATE
    assert "behind the partition's event-time clock" in reasons[0]


def test_once_defined_the_partition_clock_excuses_a_slow_source() -> None:
    ts = steady(60, step=60.0)
    src = ts.copy()
    src[30:] -= 3 * 3600.0  # the producer's clock falls three hours behind
    verdict, _, _ = admit_in_cuts(ts, src, [])
    assert verdict == [ADMITTED] * 60  # ahead of the source, not of the partition clock
    ts[45] += 2 * 3600.0  # but ahead of both is too far
    verdict, _, _ = admit_in_cuts(ts, src, [])
    assert verdict[45] == AHEAD


@pytest.mark.parametrize("seed", range(5))
def test_decisions_do_not_depend_on_how_the_stream_is_cut(seed: int) -> None:
    """Same verdicts, reasons and clock whatever the batch boundaries (a resumed run
    cuts its batches elsewhere than a clean one)."""
    rng = np.random.default_rng(seed)
    n = 3000
    ts = T0 + np.cumsum(rng.exponential(120.0, n))
    ts += rng.normal(0, 600.0, n)  # out of order by minutes
    src = ts + rng.normal(0, 60.0, n)
    src[rng.random(n) < 0.1] = np.nan
    odd = rng.random(n)
    ts[odd < 0.01] += rng.choice([2 * 3600.0, 3e8], int((odd < 0.01).sum()))  # ahead
    ts[(odd > 0.99)] -= rng.choice([2 * 86400.0, 3e8], int((odd > 0.99).sum()))  # late
    whole = admit_in_cuts(ts, src, [])
    assert whole[0].count(AHEAD) > 10 and whole[0].count(LATE) > 10
    r = random.Random(seed)
    for _ in range(3):
        cuts = sorted(r.sample(range(1, n), r.randrange(1, 200)))
        assert admit_in_cuts(ts, src, cuts) == whole
    assert admit_in_cuts(ts, src, list(range(1, n))) == whole  # one event at a time


def test_persisted_clock_round_trips() -> None:
    clock = PartitionClock(10)
    clock.add(steady(25))
    again = PartitionClock.from_bytes(clock.to_bytes(), 10)
    assert again.now == clock.now and again.newest == clock.newest
    assert PartitionClock.from_bytes(None, 10).now == -math.inf
