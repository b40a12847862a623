"""Score a batch of one partition's events: state in, features, inference, state out.

For a batch the scorer:
1. admits the new events against the partition's event-time clock, in offset
   order (too far ahead or too far behind: a dead letter; see event_time.py);
2. groups events by user, keeping order (a user's events in the batch are its run);
3. reads every user's record with one multi-get and decodes them into columns;
4. applies the events (batch_shapes.py): fences replays, expires idle users (TTL
   in event time), rejects events too far behind their user's last event,
   computes features with numpy and runs the model once per distinct run length
   (or once per wave: for a stateful model without a sequence form, and for a
   batch spread evenly over its users, where waves make as few calls);
5. writes the new records, one outbox entry with the batch's lines (and one per
   rejection), the clock and the high-water mark in one atomic write (a `WriteSet`);
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
import weakref
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii as _json_str

import numpy as np

from bytewax_fraud.admission import event_time
from bytewax_fraud.admission.event_time import PartitionClock, TimePolicy
from bytewax_fraud.admission.rejects import reject
from bytewax_fraud.batch_shapes import APPLIED, FENCED, USER_LATE, Rules, apply_events, group
from bytewax_fraud.control.deployment import Deployment
from bytewax_fraud.errors import RecoveryError
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.inference.sequence import BatchShape, batch_shape
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
from bytewax_fraud.state.codec import decode, decode_headers, encode
from bytewax_fraud.state.outbox import decode_rejection, encode_entry, encode_rejection, read_lines
from bytewax_fraud.state.writeset import WriteSet


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
        self._rules = Rules(ttl=ttl_seconds, lateness=self.policy.allowed_lateness)
        #: Each model's batch shape, looked up once per model object (not once per batch).
        #: Each serving model's batch shape, held weakly: a model no deployment, candidate
        #: or rollback target uses is released with its session (runtime.model_session).
        self._shapes: weakref.WeakKeyDictionary[LoadedModel, BatchShape] = (
            weakref.WeakKeyDictionary()
        )

    def score(self, events: EventBatch | Sequence[Event]) -> ScoredBatch:
        """Score events (in partition order), splitting into batches of at most `batch_max`."""
        batch = events if isinstance(events, EventBatch) else EventBatch.from_events(events)
        n, size = len(batch), self.batch_max
        if n <= size:
            return self._score_slice(batch)
        return concat_scored(
            [self._score_slice(batch.slice(i, i + size)) for i in range(0, n, size)]
        )

    def _score_slice(self, batch: EventBatch) -> ScoredBatch:
        """Admit, score and persist one batch: one atomic write for all it changed."""
        dead: list[DeadLetter] = []
        writes = WriteSet()
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
                writes.put(outbox_key(int(batch.offsets[i])), encode_rejection(cls, reason))
            new[fresh[bad]] = False
        keep = np.flatnonzero(old | new)
        scored = self._score_deployed(
            batch if len(keep) == len(batch) else batch.take(keep), writes
        )
        self.high_water = max(self.high_water, int(batch.offsets.max()) + 1)
        if len(fresh) or writes:
            writes.put(event_time.CLOCK_KEY, self.clock.to_bytes())
            writes.put(HIGH_WATER_KEY, self.high_water.to_bytes(8, "big"))
            writes.apply(self.store)
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

    def _score_deployed(self, batch: EventBatch, writes: WriteSet) -> ScoredBatch:
        """Score with the deployment's models: the candidate's users apart from the rest.

        What is to be written is added to `writes`.
        """
        dep = self.deployment
        if dep.candidate is None or len(batch) == 0:
            return self._score(batch, dep.primary, writes)
        mask = dep.on_candidate(batch.user_ids)
        parts = []
        for idx, model in (
            (np.flatnonzero(~mask), dep.primary),
            (np.flatnonzero(mask), dep.candidate),
        ):
            if len(idx):
                part = self._score(batch.take(idx), model, writes)
                if part.dead_letters:  # place only what it scored
                    gone = [d.origin.offset for d in part.dead_letters]
                    idx = idx[~np.isin(batch.offsets[idx], gone)]
                parts.append((idx, part))
        return _interleave(parts)

    def _score(self, batch: EventBatch, model: LoadedModel, writes: WriteSet) -> ScoredBatch:
        if len(batch) == 0:
            return empty_scored()
        g = group(batch)
        user_keys = [user_key(u) for u in g.users]
        st = decode(
            self.cache.get_many(user_keys, self.store), self.window, model.hidden_size, model.tag
        )
        applied = apply_events(batch, g, st, model, self._shape(model), self._rules)
        fate, prob, late = applied.fate, applied.prob, applied.late
        applied_at = applied.dirty
        lines, latency = self._lines(batch, prob, model)
        replayed = np.flatnonzero(fate == FENCED).tolist()
        # The outbox gets the lines of the events applied now; replays read theirs back.
        fresh_lines, fresh_offsets = lines, batch.offsets
        if replayed or late:
            if replayed:
                self._read_outbox(batch, replayed, lines, prob, latency)
            fresh_lines = [lines[i] for i in applied_at.tolist()]
            fresh_offsets = batch.offsets[applied_at]
        dirty = np.zeros(len(g.users), bool)
        dirty[g.row_of[applied_at]] = True
        d = np.flatnonzero(dirty)
        written_keys = [user_keys[j] for j in d.tolist()]
        written = encode(st.take(d), model.tag)
        # A failed store write stops the job, so the cache may learn them before it.
        self.cache.put(written_keys, written)
        writes.put_many(written_keys, written)
        if fresh_lines:
            writes.put(*encode_entry(fresh_offsets, fresh_lines))
        dead: list[DeadLetter] = []
        for i, reason in sorted(late.items()):
            dead.append(reject(batch, i, event_time.STAGE, event_time.TOO_LATE, reason))
            writes.put(
                outbox_key(int(batch.offsets[i])), encode_rejection(event_time.TOO_LATE, reason)
            )
        scored = ScoredBatch(
            user_ids=batch.user_ids,
            lines=lines,
            latencies_ms=latency,
            probabilities=prob,
            labels=batch.labels,
            replayed=len(replayed),
            expired=applied.expired,
            inference_seconds=applied.inference_seconds,
            late_accepted=applied.late_accepted,
            sequence_calls=applied.sequence_calls,
            scores={model.label: prob[fate == APPLIED] if replayed or late else prob},
            offsets=batch.offsets,
            score_labels={
                model.label: batch.labels[fate == APPLIED] if replayed or late else batch.labels
            },
        )
        if not late:
            return scored
        kept = np.flatnonzero(fate != USER_LATE)  # only the scored events go on
        at = kept.tolist()
        return dataclasses.replace(
            scored,
            user_ids=[batch.user_ids[i] for i in at],
            lines=[lines[i] for i in at],
            latencies_ms=latency[kept],
            probabilities=prob[kept],
            labels=batch.labels[kept],
            dead_letters=dead,
            offsets=batch.offsets[kept],
        )

    def _shape(self, model: LoadedModel) -> BatchShape:
        found = self._shapes.get(model)
        if found is None:
            found = self._shapes[model] = batch_shape(model)
        return found

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
        """Drop outbox entries for offsets below `below` (they can no longer be replayed).

        The range delete and the new replay floor are one atomic write: a crash leaves
        either both or neither, never a pruned outbox behind a floor that still allows
        a replay from below `below`.
        """
        if below > 0:
            writes = WriteSet()
            writes.delete_range(outbox_key(0), outbox_key(below))
            writes.put(REPLAY_FLOOR_KEY, below.to_bytes(8, "big"))
            writes.apply(self.store)

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


def _merge_scores(parts: list[ScoredBatch], column: str = "scores") -> dict[str, np.ndarray]:
    """Join the per-model probabilities (or `score_labels`) of several batches."""
    grouped: dict[str, list[np.ndarray]] = {}
    for part in parts:
        for label, probs in getattr(part, column).items():
            grouped.setdefault(label, []).append(probs)
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in grouped.items()}


def concat_scored(parts: list[ScoredBatch]) -> ScoredBatch:
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
        sequence_calls=sum(p.sequence_calls for p in parts),
        scores=_merge_scores(parts),
        score_labels=_merge_scores(parts, "score_labels"),
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
        sequence_calls=sum(p.sequence_calls for _, p in parts),
        scores=_merge_scores([p for _, p in parts]),
        score_labels=_merge_scores([p for _, p in parts], "score_labels"),
        offsets=np.concatenate([p.offsets for _, p in parts])[order],
    )


def empty_scored() -> ScoredBatch:
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
