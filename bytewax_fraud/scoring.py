"""Score a batch of one partition's events: state in, features, waves of inference, state out.

For a batch the scorer:
1. groups events by user, keeping order (a user's k-th event in the batch is in wave k);
2. reads every user's record with one multi-get and decodes them into columns;
3. per wave: fences replays, expires idle users (TTL in event time), computes
   features with numpy and runs one model call for the whole wave;
4. writes the new records, plus one outbox entry with the batch's lines, in one atomic batch;
5. returns the prediction lines in input order.

Replays after a crash: an event at or below its user's `last_offset` was
applied already; its state is not touched again and its prediction is read
back, byte for byte, from the outbox.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as _json_str

import numpy as np

from bytewax_fraud.control.deployment import Deployment
from bytewax_fraud.errors import RecoveryError
from bytewax_fraud.features import compute_features, merchant_code, push
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.records import Event, EventBatch, ScoredBatch
from bytewax_fraud.state.base import (
    HIGH_WATER_KEY,
    REPLAY_FLOOR_KEY,
    USER_PREFIX,
    StateStore,
    outbox_key,
    user_key,
)
from bytewax_fraud.state.codec import UserStates, decode, decode_headers, encode
from bytewax_fraud.state.outbox import encode_entry, read_lines


@dataclass(frozen=True, slots=True)
class _Groups:
    """A batch's events grouped by user: each event's user row and wave."""

    users: list[str]  # distinct, in order of first appearance
    row_of: np.ndarray  # event -> index into users
    wave_of: np.ndarray  # event -> how many earlier events of its user are in the batch
    merchant: np.ndarray  # event -> merchant code


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
    ) -> None:
        self.partition = partition
        self.store = store
        #: The models serving this partition; control commands replace it.
        self.deployment = Deployment(model)
        self.window = window
        self.ttl = ttl_seconds
        self.batch_max = batch_max
        #: Largest event time seen: the partition's event-time watermark (for the TTL sweep).
        self.watermark = 0.0
        #: One past the largest offset applied (for outbox pruning).
        self.high_water = 0
        self._merchant_codes: dict[str, int] = {}

    def score(self, events: EventBatch | Sequence[Event]) -> ScoredBatch:
        """Score events (in partition order), splitting into batches of at most `batch_max`."""
        batch = events if isinstance(events, EventBatch) else EventBatch.from_events(events)
        n, size = len(batch), self.batch_max
        if n <= size:
            return self._score_deployed(batch)
        return _concat([self._score_deployed(batch.slice(i, i + size)) for i in range(0, n, size)])

    def _score_deployed(self, batch: EventBatch) -> ScoredBatch:
        """Score with the deployment's models: the candidate's users apart from the rest."""
        dep = self.deployment
        if dep.candidate is None:
            return self._score(batch, dep.primary)
        mask = dep.on_candidate(batch.user_ids)
        parts = []
        for idx, model in (
            (np.flatnonzero(~mask), dep.primary),
            (np.flatnonzero(mask), dep.candidate),
        ):
            if len(idx):
                parts.append((idx, self._score(batch.take(idx), model)))
        return _interleave(parts, len(batch))

    def _score(self, batch: EventBatch, model: LoadedModel) -> ScoredBatch:
        g = self._groups(batch)
        keys = [user_key(u) for u in g.users]
        st = decode(self.store.get_many(keys), self.window, model.hidden_size, model.tag)
        applied, dirty, prob, expired, infer = self._apply_waves(batch, g, st, model)
        lines, latency = self._lines(batch, prob, model)
        replayed = np.flatnonzero(~applied).tolist()
        # The outbox gets the lines of the events applied now; replays read theirs back.
        fresh_lines, fresh_offsets = lines, batch.offsets
        if replayed:
            self._read_outbox(batch, replayed, lines, prob, latency)
            fresh = np.flatnonzero(applied)
            fresh_lines, fresh_offsets = [lines[i] for i in fresh.tolist()], batch.offsets[fresh]
        # One atomic write: records of changed users, the outbox entry, the high-water mark.
        self.high_water = max(self.high_water, int(batch.offsets.max()) + 1)
        d = np.flatnonzero(dirty)
        if len(d):
            box_key, box = encode_entry(fresh_offsets, fresh_lines)
            self.store.write(
                [keys[j] for j in d.tolist()] + [box_key, HIGH_WATER_KEY],
                encode(st.take(d), model.tag) + [box, self.high_water.to_bytes(8, "big")],
            )
        self.watermark = max(self.watermark, float(batch.timestamps.max()))
        return ScoredBatch(
            user_ids=batch.user_ids,
            lines=lines,
            latencies_ms=latency,
            probabilities=prob,
            labels=batch.labels,
            replayed=len(replayed),
            expired=expired,
            inference_seconds=infer,
        )

    def _groups(self, batch: EventBatch) -> _Groups:
        """Group the events by user, in order; code the merchants."""
        codes = self._merchant_codes
        if len(codes) > 200_000:
            codes.clear()  # a bound on the merchant-code cache
        rows: dict[str, int] = {}
        seen: dict[str, int] = {}
        row_list = []
        wave_list = []
        for uid in batch.user_ids:
            row_list.append(rows.setdefault(uid, len(rows)))
            k = seen.get(uid, 0)
            seen[uid] = k + 1
            wave_list.append(k)
        return _Groups(
            users=list(rows),
            row_of=np.asarray(row_list, np.intp),
            wave_of=np.asarray(wave_list, np.intp),
            merchant=np.fromiter(
                [codes.get(m) or codes.setdefault(m, merchant_code(m)) for m in batch.merchants],
                np.uint32,
                len(batch),
            ),
        )

    def _apply_waves(
        self, b: EventBatch, g: _Groups, st: UserStates, model: LoadedModel
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, list[float]]:
        """Run every user's k-th event in wave k: fence, expire, features, one model call.

        Returns which events were applied, which users changed, the probabilities,
        the number of TTL expiries and the duration of each model call.
        """
        n = len(b)
        prob = np.zeros(n, np.float32)
        applied = np.zeros(n, bool)
        dirty = np.zeros(len(g.users), bool)
        expired_total = 0
        infer: list[float] = []
        order = np.argsort(g.wave_of, kind="stable")
        bounds = np.searchsorted(g.wave_of[order], np.arange(int(g.wave_of.max()) + 2))
        for wave in range(len(bounds) - 1):
            e = order[bounds[wave] : bounds[wave + 1]]
            r = g.row_of[e]
            fresh = b.offsets[e] > st.last_offset[r]  # replays were applied the first time
            if not fresh.all():
                e, r = e[fresh], r[fresh]
                if len(e) == 0:
                    continue
            expired = (st.count[r] > 0) & (b.timestamps[e] - st.last_ts[r] > self.ttl)
            if expired.any():
                st.reset(r[expired])
                expired_total += int(expired.sum())
            feats = compute_features(
                st.amounts[r],
                st.merchants[r],
                st.count[r],
                st.last_ts[r],
                b.amounts[e],
                b.timestamps[e],
                g.merchant[e],
            )
            t = time.perf_counter()
            p, h = model.predict(feats, st.hidden[r] if model.hidden_size else None)
            infer.append(time.perf_counter() - t)
            prob[e] = p
            if h is not None:
                st.hidden[r] = h
            st.amounts[r], st.merchants[r], st.count[r] = push(
                st.amounts[r], st.merchants[r], st.count[r], b.amounts[e], g.merchant[e]
            )
            st.last_ts[r] = b.timestamps[e]
            st.last_offset[r] = b.offsets[e]
            applied[e] = True
            dirty[r] = True
        return applied, dirty, prob, expired_total, infer

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

        A record is deleted when its last event is older than the TTL (plus a day of
        grace for late events) at the partition's watermark, and its last offset is
        below `safe_offset`, the oldest offset a resume could replay from, so a
        replayed event never meets a record the first run still had.

        Returns the key to continue from (None after the last user) and the count deleted.
        """
        end = bytes([USER_PREFIX[0] + 1])
        items = self.store.scan(start, end, limit)
        if not items:
            return None, 0
        heads = decode_headers([v for _, v in items])
        cutoff = self.watermark - self.ttl - 86400.0
        stale = (heads["last_ts"] < cutoff) & (heads["last_offset"] < safe_offset)
        doomed = [items[i][0] for i in np.flatnonzero(stale).tolist()]
        if doomed:
            # The floor in the same atomic write: a restart from offset 0 is no longer safe.
            self.store.write([REPLAY_FLOOR_KEY], [safe_offset.to_bytes(8, "big")], doomed)
        nxt = items[-1][0] + b"\x00"
        return (nxt if len(items) == limit else None), len(doomed)


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
    )


def _interleave(parts: list[tuple[np.ndarray, ScoredBatch]], n: int) -> ScoredBatch:
    """Merge batches scored apart (one per model) back into input order."""
    if len(parts) == 1:
        return parts[0][1]
    user_ids: list[str] = [""] * n
    lines: list[bytes] = [b""] * n
    latencies = np.empty(n, np.float64)
    probs = np.empty(n, np.float32)
    labels = np.empty(n, np.int8)
    for idx, part in parts:
        for j, i in enumerate(idx.tolist()):
            user_ids[i] = part.user_ids[j]
            lines[i] = part.lines[j]
        latencies[idx] = part.latencies_ms
        probs[idx] = part.probabilities
        labels[idx] = part.labels
    return ScoredBatch(
        user_ids=user_ids,
        lines=lines,
        latencies_ms=latencies,
        probabilities=probs,
        labels=labels,
        replayed=sum(p.replayed for _, p in parts),
        expired=sum(p.expired for _, p in parts),
        inference_seconds=[t for _, p in parts for t in p.inference_seconds],
    )
