"""`DeadlineBatcher`: full batches at once, partial ones at the deadline."""

from __future__ import annotations

from bytewax_fraud.connectors.batching import DeadlineBatcher


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_batch_goes_out_at_once_and_the_rest_waits_for_its_deadline() -> None:
    clock = Clock()
    b = DeadlineBatcher(batch_max=4, timeout_s=0.5, clock=clock)
    assert b.take(10) == 4  # full: no wait
    assert b.deadline() == 100.5  # 6 still pending, their wait starts now
    assert b.take(6) == 4
    clock.now += 0.1
    assert b.take(2) == 0  # not full, not late
    clock.now += 0.4
    assert b.take(2) == 2  # the deadline has come
    assert b.deadline() is None


def test_nothing_pending_resets_the_deadline() -> None:
    clock = Clock()
    b = DeadlineBatcher(batch_max=8, timeout_s=1.0, clock=clock)
    assert b.take(3) == 0 and b.deadline() == 101.0
    assert b.take(0) == 0 and b.deadline() is None
    clock.now += 5.0
    assert b.take(1) == 0  # a new item waits its own full timeout
    assert b.deadline() == 106.0
