"""Apply a batch's events to their users' states: fences, TTL, lateness, features, the model.

Pure logic over columns: the scorer reads the states before and writes them after.
Events of one user are applied in batch (= offset) order. Two shapes feed the model:

* **Runs.** A user's events in the batch form a run of length k. Users whose runs
  have the same k go through a stateful model together, in one call: [k, B, F]
  through its sequence form (for k = 1, through the step model); a stateless model
  takes the rows of every run of the batch in one call. The features of step j depend on the
  steps before it (window, count, time gap); they are computed for every step of
  every run at once, from the user's window extended by the run (a sliding window).
  So a batch makes at most one model call per distinct run length, and a hot user
  with 300 events in a batch costs one call, not 300.
* **Waves.** Wave k takes every user's k-th event, one model call per wave, so the
  busiest user sets the number of calls. Used for a batch where runs would save no
  calls (`runs_pay`), for a stateful model without a sequence form, and for runs that
  are not regular: a run in which an event other than the first finds its user
  expired (a gap longer than the TTL), or in which an event is too far behind its
  user's last one (a rejection shortens the run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bytewax_fraud.admission import event_time
from bytewax_fraud.features import compute_features, merchant_codes, push
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.inference.sequence import BatchShape
from bytewax_fraud.records import EventBatch
from bytewax_fraud.state.codec import UserStates

#: What became of each event.
APPLIED, FENCED, USER_LATE = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Groups:
    """A batch's events grouped by user: each event's user row and wave."""

    users: list[str]  # distinct, in order of first appearance
    row_of: np.ndarray  # event -> index into users
    wave_of: np.ndarray  # event -> how many earlier events of its user are in the batch
    merchant: np.ndarray  # event -> merchant code


def group(batch: EventBatch) -> Groups:
    """Group the events by user, in order; code the merchants (no Python loop per event)."""
    n = len(batch)
    users = list(dict.fromkeys(batch.user_ids))  # distinct, in order of first appearance
    merchant = merchant_codes(batch.merchants)
    if len(users) == n:  # one event per user (most small batches): all in wave 0
        return Groups(
            users=users, row_of=np.arange(n), wave_of=np.zeros(n, np.intp), merchant=merchant
        )
    rows = {u: i for i, u in enumerate(users)}
    row_of = np.fromiter(map(rows.__getitem__, batch.user_ids), np.intp, n)
    # A user's k-th event is in wave k: its rank among its user's events.
    order = np.argsort(row_of, kind="stable")
    ranked = row_of[order]
    first = np.flatnonzero(np.concatenate(([True], ranked[1:] != ranked[:-1])))
    wave_of = np.empty(n, np.intp)
    wave_of[order] = np.arange(n) - np.repeat(first, np.diff(np.append(first, n)))
    return Groups(users=users, row_of=row_of, wave_of=wave_of, merchant=merchant)


@dataclass(frozen=True, slots=True)
class Rules:
    """What decides an event's fate besides its user's state."""

    ttl: float  # seconds of event time after which a user's history is forgotten
    lateness: float  # how far behind its user's last event an event may be


@dataclass(frozen=True, slots=True)
class Applied:
    """What applying events produced, one entry per event of the batch.

    Attributes:
        fate: `APPLIED`, `FENCED` (a replay, applied before) or `USER_LATE` (rejected).
        prob: The probability of each applied event (0 elsewhere).
        late: Reasons of the `USER_LATE` events, by position in the batch.
        expired: Users whose history expired (TTL) before one of these events.
        late_accepted: Events applied although behind their user's last event.
        inference_seconds: The duration of each model call.
        sequence_calls: Model calls that took runs longer than one event.
    """

    fate: np.ndarray
    prob: np.ndarray
    late: dict[int, str]
    expired: int
    late_accepted: int
    inference_seconds: list[float]
    sequence_calls: int = 0

    @property
    def dirty(self) -> np.ndarray:
        """Positions of the applied events (their users' states changed)."""
        return np.flatnonzero(self.fate == APPLIED)


def runs_pay(g: Groups) -> bool:
    """Whether runs save model calls enough to pay for screening them.

    Waves make one call per event of the busiest user; runs one per distinct run
    length, plus the screening of each length's runs. A batch spread evenly over its
    users has about as many waves as run lengths (a few of each), so it goes in waves;
    a hot user's run (tens or hundreds of events) goes in runs. Both give the same
    results bit for bit, so this is only a matter of cost.
    """
    waves = int(g.wave_of.max(initial=0)) + 1
    if waves <= 2:
        return False
    lengths = np.unique(np.bincount(g.row_of)).shape[0]
    return waves > 2 * lengths + 2


def apply_events(
    b: EventBatch, g: Groups, st: UserStates, model: LoadedModel, shape: BatchShape, rules: Rules
) -> Applied:
    """Apply every event to its user's state in `st` (updated in place), in runs or waves."""
    n = len(b)
    fate = np.full(n, APPLIED, np.int8)
    prob = np.zeros(n, np.float32)
    fresh = b.offsets > st.last_offset[g.row_of]  # replays were applied the first time
    fate[~fresh] = FENCED
    if not shape.runs or not runs_pay(g):
        return _waves(b, g, st, model, rules, np.flatnonzero(fresh), fate, prob)
    runs = _runs(b, g, st, model, shape, rules, fresh, fate, prob)
    if not len(runs.left):
        return runs.applied
    waves = _waves(b, g, st, model, rules, runs.left, fate, prob)
    a = runs.applied
    return Applied(
        fate=fate,
        prob=prob,
        late=waves.late,
        expired=a.expired + waves.expired,
        late_accepted=a.late_accepted + waves.late_accepted,
        inference_seconds=a.inference_seconds + waves.inference_seconds,
        sequence_calls=a.sequence_calls,
    )


def _waves(
    b: EventBatch,
    g: Groups,
    st: UserStates,
    model: LoadedModel,
    rules: Rules,
    events: np.ndarray,
    fate: np.ndarray,
    prob: np.ndarray,
) -> Applied:
    """Apply `events` (fresh ones, in batch order) wave by wave; fills `fate` and `prob`."""
    late: dict[int, str] = {}
    expired_total = 0
    late_ok = 0
    infer: list[float] = []
    waves = g.wave_of[events]
    if not len(events):
        order, bounds = events, [0]
    elif waves.any():
        order = events[np.argsort(waves, kind="stable")]
        bounds = np.searchsorted(g.wave_of[order], np.arange(int(waves.max()) + 2)).tolist()
    else:  # one wave: a batch with one event per user
        order, bounds = events, [0, len(events)]
    for wave in range(len(bounds) - 1):
        e = order[bounds[wave] : bounds[wave + 1]]
        if len(e) == 0:
            continue
        r = g.row_of[e]
        ts = b.timestamps[e]
        count, last_ts = st.count[r], st.last_ts[r]
        expired = (count > 0) & (ts - last_ts > rules.ttl)
        if expired.any():
            st.reset(r[expired])
            expired_total += int(expired.sum())
            count, last_ts = st.count[r], st.last_ts[r]
        behind = (count > 0) & (ts < last_ts)
        if behind.any():
            too_late = behind & (ts < last_ts - rules.lateness)
            if too_late.any():
                for i, t, last in zip(
                    e[too_late].tolist(),
                    ts[too_late].tolist(),
                    last_ts[too_late].tolist(),
                    strict=True,
                ):
                    fate[i] = USER_LATE
                    late[i] = event_time.behind_user_reason(t, last, rules.lateness)
                kept = ~too_late
                e, r, ts, count, last_ts = e[kept], r[kept], ts[kept], count[kept], last_ts[kept]
                if len(e) == 0:
                    continue
            late_ok += int(behind.sum()) - int(too_late.sum())
        amounts, merchants, amount, merchant = (
            st.amounts[r],
            st.merchants[r],
            b.amounts[e],
            g.merchant[e],
        )
        feats = compute_features(amounts, merchants, count, last_ts, amount, ts, merchant)
        t0 = time.perf_counter()
        p, h = model.predict(feats, st.hidden[r] if model.hidden_size else None)
        infer.append(time.perf_counter() - t0)
        prob[e] = p
        if h is not None:
            st.hidden[r] = h
        st.amounts[r], st.merchants[r], st.count[r] = push(
            amounts, merchants, count, amount, merchant
        )
        # A late event (within the lateness) never moves its user's clock backwards.
        st.last_ts[r] = np.maximum(last_ts, ts)
        st.last_offset[r] = b.offsets[e]
    return Applied(fate, prob, late, expired_total, late_ok, infer)


@dataclass(frozen=True, slots=True)
class _RunsApplied:
    applied: Applied
    left: np.ndarray  # fresh events of irregular runs, in batch order: for waves


@dataclass(frozen=True, slots=True)
class _Runs:
    """Users' runs of one length k, as [B, k] matrices (row: one user's run, in order)."""

    ev: np.ndarray  # [B, k] positions in the batch
    rows: np.ndarray  # [B] user rows
    ts: np.ndarray  # [B, k] event times
    prev: np.ndarray  # [B, k] the user's last event time before each step
    expired: np.ndarray  # [B] the user's history expired before the first step
    behind: np.ndarray  # [B, k] steps behind their user's last event (scored late)
    bad: np.ndarray  # [B] irregular runs: for waves

    def regular(self) -> _Runs:
        """Only the regular runs."""
        keep = ~self.bad
        return _Runs(
            self.ev[keep],
            self.rows[keep],
            self.ts[keep],
            self.prev[keep],
            self.expired[keep],
            self.behind[keep],
            self.bad[keep],
        )


def _screen(b: EventBatch, st: UserStates, rules: Rules, ev: np.ndarray, r: np.ndarray) -> _Runs:
    """Each step's previous event time, the TTL and lateness verdicts, the irregular runs."""
    k = ev.shape[1]
    ts = b.timestamps[ev]
    has = st.count[r] > 0
    expired = has & (ts[:, 0] - st.last_ts[r] > rules.ttl)
    base_ts = np.where(expired, 0.0, st.last_ts[r])  # an expired user starts afresh
    # prev[:, j]: the user's last event time before step j (a late one never lowers it).
    prev = np.empty_like(ts)
    prev[:, 0] = base_ts
    if k > 1:
        prev[:, 1:] = np.maximum(base_ts[:, None], np.maximum.accumulate(ts, axis=1)[:, :-1])
    hist = np.ones_like(ts, dtype=bool)
    hist[:, 0] = has & ~expired
    behind = hist & (ts < prev)
    bad = (behind & (ts < prev - rules.lateness)).any(axis=1)
    if k > 1:
        bad |= (ts[:, 1:] - prev[:, 1:] > rules.ttl).any(axis=1)
    return _Runs(ev, r, ts, prev, expired, behind, bad)


def _features(
    b: EventBatch, g: Groups, st: UserStates, runs: _Runs
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features [B*k, F] of every step, and each user's window after its run.

    Step j's window is the last N of (the user's window, the run's first j events): a
    sliding window over the two joined.
    """
    ev, r = runs.ev, runs.rows
    users, k = ev.shape
    window = st.amounts.shape[1]
    amount, merchant = b.amounts[ev], g.merchant[ev]
    if k == 1:  # the window as it is (as waves do: no joined copy to slide over)
        amounts, merchants, count = st.amounts[r], st.merchants[r], st.count[r]
        feats = compute_features(
            amounts, merchants, count, runs.prev[:, 0], amount[:, 0], runs.ts[:, 0], merchant[:, 0]
        )
        after_a, after_m, _ = push(amounts, merchants, count, amount[:, 0], merchant[:, 0])
        return feats, after_a, after_m
    amounts = np.concatenate([st.amounts[r], amount.astype(np.float32)], axis=1)
    merchants = np.concatenate([st.merchants[r], merchant], axis=1)
    count = np.minimum(st.count[r][:, None] + np.arange(k), window)
    feats = compute_features(
        np.ascontiguousarray(sliding_window_view(amounts, window, axis=1)[:, :k]).reshape(
            users * k, window
        ),
        np.ascontiguousarray(sliding_window_view(merchants, window, axis=1)[:, :k]).reshape(
            users * k, window
        ),
        count.ravel(),
        runs.prev.ravel(),
        amount.ravel(),
        runs.ts.ravel(),
        merchant.ravel(),
    )
    return feats, amounts[:, k:], merchants[:, k:]


def _runs(
    b: EventBatch,
    g: Groups,
    st: UserStates,
    model: LoadedModel,
    shape: BatchShape,
    rules: Rules,
    fresh: np.ndarray,
    fate: np.ndarray,
    prob: np.ndarray,
) -> _RunsApplied:
    """Apply the fresh events run by run: one model call per distinct run length."""
    # The fresh events of each user, in order: a run. Fenced ones (replays) are a prefix.
    idx = np.flatnonzero(fresh)
    order = idx[np.argsort(g.row_of[idx], kind="stable")]
    rows = g.row_of[order]
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(order) else order
    lengths = np.diff(np.r_[starts, len(order)])
    window = st.amounts.shape[1]
    expired_total = late_ok = calls = 0
    infer: list[float] = []
    irregular: list[np.ndarray] = []
    stateless: list[tuple[np.ndarray, np.ndarray]] = []  # (events, features) of every run
    for k in np.unique(lengths).tolist():
        first = starts[lengths == k]
        runs = _screen(b, st, rules, order[first[:, None] + np.arange(k)], rows[first])
        if runs.bad.any():
            irregular.append(runs.ev[runs.bad].ravel())
            runs = runs.regular()
            if len(runs.rows) == 0:
                continue
        ev, r = runs.ev, runs.rows
        if runs.expired.any():
            st.reset(r[runs.expired])
            expired_total += int(runs.expired.sum())
        late_ok += int(runs.behind.sum())
        feats, after_amounts, after_merchants = _features(b, g, st, runs)
        if model.hidden_size == 0:  # rows are independent: one call for all runs, below
            stateless.append((ev.ravel(), feats))
        else:
            t0 = time.perf_counter()
            if k == 1:
                p, h = model.predict(feats, st.hidden[r])
            else:
                assert shape.sequence is not None
                steps = np.ascontiguousarray(feats.reshape(len(r), k, -1).transpose(1, 0, 2))
                p_steps, h = shape.sequence.predict(steps, st.hidden[r])
                p = p_steps.T
                calls += 1
            infer.append(time.perf_counter() - t0)
            prob[ev] = p.reshape(len(r), k)
            st.hidden[r] = h
        st.amounts[r] = after_amounts
        st.merchants[r] = after_merchants
        st.count[r] = np.minimum(st.count[r] + k, window)
        st.last_ts[r] = np.maximum(runs.prev[:, -1], runs.ts[:, -1])
        st.last_offset[r] = b.offsets[ev[:, -1]]
    if stateless:
        t0 = time.perf_counter()
        p, _ = model.predict(np.concatenate([f for _, f in stateless]), None)
        infer.append(time.perf_counter() - t0)
        calls += int(lengths.max()) > 1
        prob[np.concatenate([e for e, _ in stateless])] = p
    left = np.sort(np.concatenate(irregular)) if irregular else np.empty(0, np.intp)
    applied = Applied(fate, prob, {}, expired_total, late_ok, infer, calls)
    return _RunsApplied(applied, left)
