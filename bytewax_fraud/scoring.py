"""Score a batch of one partition's events: state in, features, waves of inference, state out.

For a batch the scorer:
1. admits the new events against the partition's event-time clock, in offset
   order (too far ahead or too far behind: a dead letter; see event_time.py);
2. groups events by user, keeping order (a user's k-th event in the batch is in wave k);
3. reads every user's record with one multi-get and decodes them into columns;
4. per wave: fences replays, expires idle users (TTL in event time), rejects
   events too far behind their user's last event, computes features with numpy
   and runs one model call for the whole wave;
5. writes the new records, one outbox entry with the batch's lines (and one per
   rejection), the clock and the high-water mark in one atomic batch;
6. returns the prediction lines in input order, and the dead letters.

Replays after a crash: an event below the partition's high-water mark was
decided already. A rejected one is found as a rejection in the outbox and
rejected again with the same reason; an applied one is at or below its user's
`last_offset`, its state is not touched again and its prediction is read back,
byte for byte, from the outbox. The clock already holds the replayed events.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str

import numpy as np

from bytewax_fraud.admission import event_time
from bytewax_fraud.admission.event_time import PartitionClock, TimePolicy
from bytewax_fraud.admission.rejects import reject
from bytewax_fraud.control.deployment import Deployment
from bytewax_fraud.errors import RecoveryError
from bytewax_fraud.features import compute_features, merchant_codes, push
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.records import DeadLetter, Event, EventBatch, ScoredBatch
from bytewax_fraud.state.base import (
    HIGH_WATER_KEY,
    REPLAY_FLOOR_KEY,
    USER_PREFIX,
    StateStore,
    outbox_key,
    outbox_keys,
    user_key,
)
from bytewax_fraud.state.cache import RecordCache
from bytewax_fraud.state.codec import UserStates, decode, decode_headers, encode
from bytewax_fraud.state.outbox import decode_rejection, encode_entry, encode_rejection, read_lines


@dataclass(frozen=True, slots=True)
class _Groups:
    """A batch's events grouped by user: each event's user row and wave."""

    users: list[str]  # distinct, in order of first appearance
    row_of: np.ndarray  # event -> index into users
    wave_of: np.ndarray  # event -> how many earlier events of its user are in the batch
    merchant: np.ndarray  # event -> merchant code


#: What became of each event in `_apply_waves`.
_APPLIED, _FENCED, _USER_LATE = 0, 1, 2


class PartitionScorer:
    """Scores the events of one state partition against its store."""

    def __init__(
        self,
        partition: int,
        store: StateStore,
        model: LoadedModel,
        window: int,
        ttl_seconds: float,
        batch_max: int = 1024,
        policy: TimePolicy | None = None,
        cache_bytes: int = 0,
    ) -> None:
        self.partition = partition
        self.store = store
        #: The models serving this partition; control commands replace it.
        self.deployment = Deployment(model)
        self.window = window
        self.ttl = ttl_seconds
        self.batch_max = batch_max
        self.policy = policy or TimePolicy()
        #: The partition's event-time clock (admission and the TTL sweep); persisted.
        self.clock = PartitionClock(self.policy.rank)
        #: One past the largest offset applied (for outbox pruning).
        self.high_water = 0
        #: Recently seen users' records, so that most of a batch is not read from the store.
        self.cache = RecordCache(cache_bytes)

    def score(self, events: EventBatch | Sequence[Event]) -> ScoredBatch:
        """Score events (in partition order), splitting into batches of at most `batch_max`."""
        batch = events if isinstance(events, EventBatch) else EventBatch.from_events(events)
        n, size = len(batch), self.batch_max
        if n <= size:
            return self._score_slice(batch)
        return _concat([self._score_slice(batch.slice(i, i + size)) for i in range(0, n, size)])

    def _score_slice(self, batch: EventBatch) -> ScoredBatch:
        """Admit, score and persist one batch: one atomic write for all it changed."""
        dead: list[DeadLetter] = []
        keys: list[bytes] = []
        values: list[bytes] = []
        old = batch.offsets < self.high_water
        new = ~old
        if old.any():  # replayed after a restart: rejected ones are rejected again, as before
            gone = self._rejected_before(batch, np.flatnonzero(old), dead)
            new[gone] = False
            old[gone] = False
        fresh = np.flatnonzero(new)
        if len(fresh):
            ts = batch.timestamps[fresh]
            src = None if batch.source_ts is None else batch.source_ts[fresh]
            verdict, reasons = self.clock.admit(ts, src, self.policy)
            bad = np.flatnonzero(verdict)
            for j, reason in zip(bad.tolist(), reasons, strict=True):
                cls = (
                    event_time.TOO_FAR_AHEAD
                    if verdict[j] == event_time.AHEAD
                    else event_time.TOO_LATE
                )
                i = int(fresh[j])
                dead.append(reject(batch, i, event_time.STAGE, cls, reason))
                keys.append(outbox_key(int(batch.offsets[i])))
                values.append(encode_rejection(cls, reason))
            new[fresh[bad]] = False
        keep = np.flatnonzero(old | new)
        scored = self._score_deployed(
            batch if len(keep) == len(batch) else batch.take(keep), keys, values
        )
        self.high_water = max(self.high_water, int(batch.offsets.max()) + 1)
        if len(fresh) or keys:
            keys += [event_time.CLOCK_KEY, HIGH_WATER_KEY]
            values += [self.clock.to_bytes(), self.high_water.to_bytes(8, "big")]
            self.store.write(keys, values)
        if dead:
            dead = sorted([*dead, *scored.dead_letters], key=lambda d: d.origin.offset)
            scored = _with_dead_letters(scored, dead)
        return scored

    def _rejected_before(
        self, batch: EventBatch, idx: np.ndarray, dead: list[DeadLetter]
    ) -> np.ndarray:
        """Events at `idx` that the outbox says were rejected: their dead letters, again."""
        entries = self.store.get_many(outbox_keys(batch.offsets[idx]))
        gone = []
        for i, entry in zip(idx.tolist(), entries, strict=True):
            found = None if entry is None else decode_rejection(entry)
            if found is not None:
                dead.append(reject(batch, i, event_time.STAGE, *found))
                gone.append(i)
        return np.asarray(gone, np.intp)

    def _score_deployed(
        self, batch: EventBatch, keys: list[bytes], values: list[bytes]
    ) -> ScoredBatch:
        """Score with the deployment's models: the candidate's users apart from the rest.

        What is to be written is appended to `keys` and `values`.
        """
        dep = self.deployment
        if dep.candidate is None or len(batch) == 0:
            return self._score(batch, dep.primary, keys, values)
        mask = dep.on_candidate(batch.user_ids)
        parts = []
        for idx, model in (
            (np.flatnonzero(~mask), dep.primary),
            (np.flatnonzero(mask), dep.candidate),
        ):
            if len(idx):
                part = self._score(batch.take(idx), model, keys, values)
                if part.dead_letters:  # place only what it scored
                    gone = [d.origin.offset for d in part.dead_letters]
                    idx = idx[~np.isin(batch.offsets[idx], gone)]
                parts.append((idx, part))
        return _interleave(parts)

    def _score(
        self, batch: EventBatch, model: LoadedModel, keys: list[bytes], values: list[bytes]
    ) -> ScoredBatch:
        if len(batch) == 0:
            return _empty()
        g = self._groups(batch)
        user_keys = [user_key(u) for u in g.users]
        st = decode(
            self.cache.get_many(user_keys, self.store), self.window, model.hidden_size, model.tag
        )
        fate, late, dirty, prob, expired, late_ok, infer = self._apply_waves(batch, g, st, model)
        lines, latency = self._lines(batch, prob, model)
        replayed = np.flatnonzero(fate == _FENCED).tolist()
        # The outbox gets the lines of the events applied now; replays read theirs back.
        fresh_lines, fresh_offsets = lines, batch.offsets
        if replayed or late:
            if replayed:
                self._read_outbox(batch, replayed, lines, prob, latency)
            fresh = np.flatnonzero(fate == _APPLIED)
            fresh_lines, fresh_offsets = [lines[i] for i in fresh.tolist()], batch.offsets[fresh]
        d = np.flatnonzero(dirty)
        written_keys = [user_keys[j] for j in d.tolist()]
        written = encode(st.take(d), model.tag)
        # A failed store write stops the job, so the cache may learn them before it.
        self.cache.put(written_keys, written)
        keys += written_keys
        values += written
        if fresh_lines:
            box_key, box = encode_entry(fresh_offsets, fresh_lines)
            keys.append(box_key)
            values.append(box)
        dead: list[DeadLetter] = []
        for i, reason in sorted(late.items()):
            dead.append(reject(batch, i, event_time.STAGE, event_time.TOO_LATE, reason))
            keys.append(outbox_key(int(batch.offsets[i])))
            values.append(encode_rejection(event_time.TOO_LATE, reason))
        if late:  # only the scored events go on
            kept = np.flatnonzero(fate != _USER_LATE)
            at = kept.tolist()
            return ScoredBatch(
                user_ids=[batch.user_ids[i] for i in at],
                lines=[lines[i] for i in at],
                latencies_ms=latency[kept],
                probabilities=prob[kept],
                labels=batch.labels[kept],
                replayed=len(replayed),
                expired=expired,
                inference_seconds=infer,
                dead_letters=dead,
                late_accepted=late_ok,
                scores={model.label: prob[fate == _APPLIED]},
                offsets=batch.offsets[kept],
            )
        return ScoredBatch(
            user_ids=batch.user_ids,
            lines=lines,
            latencies_ms=latency,
            probabilities=prob,
            labels=batch.labels,
            replayed=len(replayed),
            expired=expired,
            inference_seconds=infer,
            late_accepted=late_ok,
            scores={model.label: prob[fate == _APPLIED] if replayed else prob},
            offsets=batch.offsets,
        )

    def _groups(self, batch: EventBatch) -> _Groups:
        """Group the events by user, in order; code the merchants (no Python loop per event)."""
        n = len(batch)
        users = list(dict.fromkeys(batch.user_ids))  # distinct, in order of first appearance
        rows = {u: i for i, u in enumerate(users)}
        row_of = np.fromiter(map(rows.__getitem__, batch.user_ids), np.intp, n)
        # A user's k-th event is in wave k: its rank among its user's events.
        order = np.argsort(row_of, kind="stable")
        ranked = row_of[order]
        first = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
        wave_of = np.empty(n, np.intp)
        wave_of[order] = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
        return _Groups(
            users=users, row_of=row_of, wave_of=wave_of, merchant=merchant_codes(batch.merchants)
        )

    def _apply_waves(
        self, b: EventBatch, g: _Groups, st: UserStates, model: LoadedModel
    ) -> tuple[np.ndarray, dict[int, str], np.ndarray, np.ndarray, int, int, list[float]]:
        """Run every user's k-th event in wave k: fence, expire, lateness, features, one model call.

        Returns what became of each event (`_APPLIED`, `_FENCED`, `_USER_LATE`), the
        reasons of the too-late ones, which users changed, the probabilities, the
        number of TTL expiries, of late events scored, and the duration of each
        model call.
        """
        n = len(b)
        prob = np.zeros(n, np.float32)
        fate = np.full(n, _APPLIED, np.int8)
        late: dict[int, str] = {}
        dirty = np.zeros(len(g.users), bool)
        expired_total = 0
        late_ok = 0
        lateness = self.policy.allowed_lateness
        infer: list[float] = []
        order = np.argsort(g.wave_of, kind="stable")
        bounds = np.searchsorted(g.wave_of[order], np.arange(int(g.wave_of.max()) + 2))
        for wave in range(len(bounds) - 1):
            e = order[bounds[wave] : bounds[wave + 1]]
            r = g.row_of[e]
            fresh = b.offsets[e] > st.last_offset[r]  # replays were applied the first time
            if not fresh.all():
                fate[e[~fresh]] = _FENCED
                e, r = e[fresh], r[fresh]
                if len(e) == 0:
                    continue
            ts = b.timestamps[e]
            expired = (st.count[r] > 0) & (ts - st.last_ts[r] > self.ttl)
            if expired.any():
                st.reset(r[expired])
                expired_total += int(expired.sum())
            behind = (st.count[r] > 0) & (ts < st.last_ts[r])
            if behind.any():
                too_late = behind & (ts < st.last_ts[r] - lateness)
                if too_late.any():
                    for i, t, last in zip(
                        e[too_late].tolist(),
                        ts[too_late].tolist(),
                        st.last_ts[r[too_late]].tolist(),
                        strict=True,
                    ):
                        fate[i] = _USER_LATE
                        late[i] = event_time.behind_user_reason(t, last, lateness)
                    e, r, ts = e[~too_late], r[~too_late], ts[~too_late]
                    if len(e) == 0:
                        continue
                late_ok += int(behind.sum()) - int(too_late.sum())
            feats = compute_features(
                st.amounts[r],
                st.merchants[r],
                st.count[r],
                st.last_ts[r],
                b.amounts[e],
                ts,
                g.merchant[e],
            )
            t0 = time.perf_counter()
            p, h = model.predict(feats, st.hidden[r] if model.hidden_size else None)
            infer.append(time.perf_counter() - t0)
            prob[e] = p
            if h is not None:
                st.hidden[r] = h
            st.amounts[r], st.merchants[r], st.count[r] = push(
                st.amounts[r], st.merchants[r], st.count[r], b.amounts[e], g.merchant[e]
            )
            # A late event (within the lateness) never moves its user's clock backwards.
            st.last_ts[r] = np.maximum(st.last_ts[r], ts)
            st.last_offset[r] = b.offsets[e]
            dirty[r] = True
        return fate, late, dirty, prob, expired_total, late_ok, infer

    def _lines(
        self, b: EventBatch, prob: np.ndarray, model: LoadedModel
    ) -> tuple[list[bytes], np.ndarray]:
        """Prediction JSON lines and latencies of every event (replays' lines are replaced)."""
        latency = np.round((time.time_ns() - b.ingest_ns) / 1e6, 3)
        head = f'"model":{_json_str(model.label)},"event_timestamp":'
        part = f',"partition":{self.partition},"offset":'
        labels = ["null" if x < 0 else str(x) for x in b.labels.tolist()]
        rows = zip(
            b.transaction_ids,
            b.user_ids,
            prob.astype(np.float64).tolist(),
            b.timestamps.tolist(),
            b.offsets.tolist(),
            latency.tolist(),
            labels,
            strict=True,
        )
        lines = [
            f'{{"transaction_id":{_json_str(t)},"user_id":{_json_str(u)},"probability":{p!r},'
            f'{head}{ts!r}{part}{o},"latency_ms":{lat!r},"label":{lab}}}'.encode()
            for t, u, p, ts, o, lat, lab in rows
        ]
        return lines, latency

    def _read_outbox(
        self,
        b: EventBatch,
        idx: list[int],
        lines: list[bytes],
        prob: np.ndarray,
        latency: np.ndarray,
    ) -> None:
        found = read_lines(self.store, b.offsets[idx].tolist())
        for i in idx:
            v = found.get(int(b.offsets[i]))
            if v is None:
                raise RecoveryError(
                    f"partition {self.partition}: the event at offset {b.offsets[i]} (user"
                    f" {b.user_ids[i]}) was applied to the state already, but its prediction is"
                    " not in the outbox: the input was rewound past the last snapshot. The state"
                    " directory and the recovery directory do not belong together; restore both"
                    " from the same backup, or delete both to start fresh"
                )
            lines[i] = v
            prob[i] = np.nan
            latency[i] = np.nan

    def prune_outbox(self, below: int) -> None:
        """Drop outbox entries for offsets below `below` (they can no longer be replayed)."""
        if below > 0:
            self.store.delete_range(outbox_key(0), outbox_key(below))
            self.store.write([REPLAY_FLOOR_KEY], [below.to_bytes(8, "big")])

    def sweep(self, start: bytes, limit: int, safe_offset: int) -> tuple[bytes | None, int]:
        """Delete expired user records in one chunk of the key space.

        A record is deleted when its last event is older than the TTL plus the
        allowed lateness at the partition's event-time clock: every event still
        admitted later is at most the lateness behind that clock, so it would find
        the record expired anyway, and deleting it changes no decision. Its last
        offset must also be below `safe_offset`, the oldest offset a resume could
        replay from, so a replayed event never meets a record the first run still had.

        Returns the key to continue from (None after the last user) and the count deleted.
        """
        cutoff = self.clock.now - self.ttl - self.policy.allowed_lateness
        if cutoff == -math.inf:
            return None, 0  # the clock is not defined yet: nothing can be stale
        end = bytes([USER_PREFIX[0] + 1])
        items = self.store.scan(start, end, limit)
        if not items:
            return None, 0
        heads = decode_headers([v for _, v in items])
        stale = (heads["last_ts"] < cutoff) & (heads["last_offset"] < safe_offset)
        doomed = [items[i][0] for i in np.flatnonzero(stale).tolist()]
        if doomed:
            # The floor in the same atomic write: a restart from offset 0 is no longer safe.
            self.store.write([REPLAY_FLOOR_KEY], [safe_offset.to_bytes(8, "big")], doomed)
            self.cache.drop(doomed)
        nxt = items[-1][0] + b"\x00"
        return (nxt if len(items) == limit else None), len(doomed)


def _merge_scores(parts: list[ScoredBatch]) -> dict[str, np.ndarray]:
    """Join the per-model probabilities of several batches."""
    grouped: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for label, probs in part.scores.items():
            grouped.setdefault(label, []).append(probs)
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in grouped.items()}


def _concat(parts: list[ScoredBatch]) -> ScoredBatch:
    """Join batches scored one after the other."""
    if len(parts) == 1:
        return parts[0]
    return ScoredBatch(
        user_ids=[u for p in parts for u in p.user_ids],
        lines=[line for p in parts for line in p.lines],
        latencies_ms=np.concatenate([p.latencies_ms for p in parts]),
        probabilities=np.concatenate([p.probabilities for p in parts]),
        labels=np.concatenate([p.labels for p in parts]),
        replayed=sum(p.replayed for p in parts),
        expired=sum(p.expired for p in parts),
        inference_seconds=[t for p in parts for t in p.inference_seconds],
        dead_letters=[d for p in parts for d in p.dead_letters],
        late_accepted=sum(p.late_accepted for p in parts),
        scores=_merge_scores(parts),
        offsets=np.concatenate([p.offsets for p in parts]),
    )


def _interleave(parts: list[tuple[np.ndarray, ScoredBatch]]) -> ScoredBatch:
    """Merge batches scored apart (one per model) back into input order.

    Each part comes with the input positions of the events it scored.
    """
    if len(parts) == 1:
        return parts[0][1]
    order = np.argsort(np.concatenate([idx for idx, _ in parts]), kind="stable")
    at = order.tolist()
    user_ids = [u for _, p in parts for u in p.user_ids]
    lines = [line for _, p in parts for line in p.lines]
    return ScoredBatch(
        user_ids=[user_ids[i] for i in at],
        lines=[lines[i] for i in at],
        latencies_ms=np.concatenate([p.latencies_ms for _, p in parts])[order],
        probabilities=np.concatenate([p.probabilities for _, p in parts])[order],
        labels=np.concatenate([p.labels for _, p in parts])[order],
        replayed=sum(p.replayed for _, p in parts),
        expired=sum(p.expired for _, p in parts),
        inference_seconds=[t for _, p in parts for t in p.inference_seconds],
        dead_letters=sorted(
            [d for _, p in parts for d in p.dead_letters], key=lambda d: d.origin.offset
        ),
        late_accepted=sum(p.late_accepted for _, p in parts),
        scores=_merge_scores([p for _, p in parts]),
        offsets=np.concatenate([p.offsets for _, p in parts])[order],
    )


def _empty() -> ScoredBatch:
    """A batch that scored nothing."""
    return ScoredBatch(
        user_ids=[],
        lines=[],
        latencies_ms=np.empty(0, np.float64),
        probabilities=np.empty(0, np.float32),
        labels=np.empty(0, np.int8),
        replayed=0,
        expired=0,
    )


def _with_dead_letters(scored: ScoredBatch, dead: list[DeadLetter]) -> ScoredBatch:
    """`scored` with these dead letters instead of its own."""
    return dataclasses.replace(scored, dead_letters=dead)
