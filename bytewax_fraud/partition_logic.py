"""The stateful step: one Bytewax logic per state partition, never one per user.

Bytewax keeps every logic object in memory and, on resume, rebuilds all of them
before the first new item; per-user logics make resume quadratic in the number
of users (100k users: 5.5 s, 300k: 47.5 s). Here a logic owns a whole partition: its
RocksDB store, its scorer and its TTL sweep. Its Bytewax snapshot is a few
integers; the user state lives in RocksDB, fenced by per-user offsets.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.operators import StatefulBatchLogic

from bytewax_fraud.admission.event_time import CLOCK_KEY, PartitionClock, TimePolicy
from bytewax_fraud.control.commands import ControlItem, ControlRejected
from bytewax_fraud.control.deployment import (
    DEPLOYMENTS_KEY,
    Deployment,
    DeploymentLog,
    report_rejection,
)
from bytewax_fraud.control.deployment import apply as apply_command
from bytewax_fraud.errors import RecoveryError
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.inference.sequence import batch_shape
from bytewax_fraud.records import DeadLetter, EventBatch, ScoredBatch
from bytewax_fraud.scoring import PartitionScorer, concat_scored, empty_scored
from bytewax_fraud.state import wal_sync
from bytewax_fraud.state.base import HIGH_WATER_KEY, REPLAY_FLOOR_KEY, USER_PREFIX, StateStore
from bytewax_fraud.state.buffered import BufferedStore
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.state.memory import MemoryStore
from bytewax_fraud.state.rocksdb import RocksStore
from bytewax_fraud.status import RunStats


@dataclass(frozen=True)
class PartitionConfig:
    """What every partition logic of a run shares."""

    state_dir: Path | None  # None: in-memory stores (tests, baselines)
    model: LoadedModel
    window: int
    ttl_seconds: float
    batch_max: int
    sweep_interval: float
    sweep_chunk: int
    #: Loads a model named in a persisted deployment (on resume); see control/deployment.py.
    restore_model: Callable[[dict[str, str]], LoadedModel]
    #: Snapshot high-water marks kept. A resume restarts at most one snapshot back (or
    #: `backup_interval` back, from a backup of the recovery directory), so outbox entries
    #: and records older than the oldest kept mark are safe to drop. At least 3.
    kept_marks: int = 3
    #: Write-back buffer per partition store, in bytes (0: every batch writes through).
    buffer_bytes: int = 0
    #: Users' records kept in memory per partition, in bytes (0: every batch reads the store).
    cache_bytes: int = 0
    #: Future skew, allowed lateness and clock rank (see event_time.py).
    time_policy: TimePolicy = TimePolicy()
    #: Where the partitions count what they do (a job hands in the process's `status.STATS`).
    stats: RunStats = field(default_factory=RunStats, compare=False, repr=False)


def open_store(config: PartitionConfig, partition: int, resuming: bool) -> StateStore:
    """Open a partition's store, refusing combinations that would corrupt the state."""
    if config.state_dir is None:
        return MemoryStore()
    path = partition_dir(config.state_dir, partition)
    if resuming and not path.exists():
        raise RecoveryError(
            f"the recovery data says partition {partition} has state, but {path} is missing:"
            " restore the state directory from the backup taken with the recovery directory,"
            " or delete both to start fresh"
        )
    store = RocksStore(path, syncer=wal_sync.SYNCER)
    if not resuming:
        # Starting from the beginning of the input is safe while the store can still fence
        # and re-emit everything from offset 0 (e.g. a crash before the first snapshot).
        (floor,) = store.get_many([REPLAY_FLOOR_KEY])
        if floor is not None and int.from_bytes(floor, "big") > 0:
            store.close()
            raise RecoveryError(
                f"{path} already holds user state up to offset {int.from_bytes(floor, 'big')}"
                f" or later, but this run starts partition {partition} from the beginning of its"
                " input (no recovery data), so events would be applied twice. Resume with the"
                " recovery directory that belongs to this state (bytewax.run -r), or delete the"
                " state directory to start fresh"
            )
    return BufferedStore(store, config.buffer_bytes) if config.buffer_bytes > 0 else store


def _show_deployment(stats: RunStats, dep: Deployment) -> None:
    models = [m for m in (dep.primary, dep.candidate) if m is not None]
    shapes = {m.label: batch_shape(m).reason for m in models}
    with stats.lock:
        stats.model = dep.label()
        stats.rollout = dep.rollout if dep.candidate is not None else 0.0
        stats.batch_shapes = shapes


#: What a partition's scoring step is given: events, commands, and the dead letters of
#: its input that the parse step found (handed on with the partition's other outputs).
PartitionItem = EventBatch | ControlItem | DeadLetter


@dataclass(frozen=True, slots=True)
class PartitionBatch:
    """Events, control items and dead letters of one state partition, in stream order."""

    partition: int
    items: list[PartitionItem]


class PartitionLogic(StatefulBatchLogic[PartitionBatch, ScoredBatch, dict[str, Any]]):
    """Scores one partition's events; the partition is learnt from the first event."""

    def __init__(
        self,
        config: PartitionConfig,
        resume: dict[str, Any] | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._stats = config.stats
        self._resume = resume
        self._clock = clock
        self._scorer: PartitionScorer | None = None
        self._log = DeploymentLog([])
        self._marks: list[int] = list(resume["marks"]) if resume else []
        #: One past the largest input offset this step has been given: where the input
        #: is. Snapshot marks record it, not the store's high-water mark, which after a
        #: resume is ahead of the input until the replay catches up (a mark ahead of the
        #: input would let the outbox be pruned of entries a slow replay still needs).
        self._seen = int(resume.get("seen", resume["high_water"])) if resume else 0
        self._cursor: bytes | None = resume.get("cursor") if resume else None
        self._next_sweep = clock() + config.sweep_interval
        if resume is not None:
            self._open(int(resume["partition"]))

    def _open(self, partition: int) -> PartitionScorer:
        c = self._config
        store = open_store(c, partition, self._resume is not None)
        scorer = PartitionScorer(
            partition,
            store,
            c.model,
            c.window,
            c.ttl_seconds,
            c.batch_max,
            c.time_policy,
            c.cache_bytes,
        )
        if self._resume is not None:
            scorer.high_water = int(self._resume["high_water"])
        meta, hw, clock = store.get_many([DEPLOYMENTS_KEY, HIGH_WATER_KEY, CLOCK_KEY])
        if hw is not None:
            scorer.high_water = max(scorer.high_water, int.from_bytes(hw, "big"))
        # The clock is written with the records and the high-water mark, so it holds
        # exactly the events below that mark; replayed ones are not admitted again.
        scorer.clock = PartitionClock.from_bytes(clock, c.time_policy.rank)
        if meta is not None:
            self._log = DeploymentLog.from_bytes(meta, c.restore_model)
            scorer.deployment = self._log.stack[-1]
        else:
            self._log = DeploymentLog([scorer.deployment])
        _show_deployment(self._stats, scorer.deployment)
        self._scorer = scorer
        return scorer

    def on_batch(self, batches: list[PartitionBatch]) -> tuple[Iterable[ScoredBatch], bool]:
        """Everything the partition outputs for these batches, as one `ScoredBatch`.

        Its dead letters are the parse step's, the scoring's and the commands', so
        that every output of the partition takes one path, in input order: an
        exactly-once sink can commit between any two items (transactional.py).
        """
        scorer = self._scorer or self._open(batches[0].partition)
        values = batches[0].items if len(batches) == 1 else [x for b in batches for x in b.items]
        parts: list[ScoredBatch] = []
        dead: list[DeadLetter] = []
        events: list[EventBatch] = []
        for value in values:
            if isinstance(value, EventBatch):
                events.append(value)
            elif isinstance(value, DeadLetter):
                dead.append(value)
            else:  # a control item applies between the events before and after it
                self._score(scorer, events, parts)
                dead += self._control(scorer, value)
                events = []
        self._score(scorer, events, parts)
        if not parts and not dead:
            return [], StatefulBatchLogic.RETAIN
        out = concat_scored(parts) if parts else empty_scored()
        if dead:
            out = dataclasses.replace(out, dead_letters=[*out.dead_letters, *dead])
        return [out], StatefulBatchLogic.RETAIN

    def _score(
        self, scorer: PartitionScorer, events: list[EventBatch], parts: list[ScoredBatch]
    ) -> None:
        if not events:
            return
        batch = EventBatch.concat(events)
        first = int(batch.offsets.min())
        if first < self._seen:
            # The input was rewound behind what this logic's resume state says it had seen.
            # Bytewax can resume a logic from a snapshot row left by a run that crashed while
            # its epoch was being snapshotted, newer than the input's: keep every mark at or
            # below where the input really is, so no outbox entry it replays is pruned.
            self._seen = first
            self._marks = [min(m, first) for m in self._marks]
        self._seen = max(self._seen, int(batch.offsets.max()) + 1)
        cache = scorer.cache
        hits, misses = cache.hits, cache.misses
        scored = scorer.score(batch)
        stats = self._stats
        with stats.lock:
            stats.cache_hits += cache.hits - hits
            stats.cache_misses += cache.misses - misses
            stats.sequence_calls += scored.sequence_calls
        stats.record_event_time(scorer.partition, scorer.clock.now, scored.late_accepted)
        parts.append(scored)
        if not scored.lines:
            return
        stats.record_scored(
            scored.latencies_ms,
            scored.probabilities,
            scored.labels,
            scored.replayed,
            scored.expired,
            scorer.partition,
            scored.inference_seconds,
            scored.scores,
            scored.score_labels,
        )

    def _control(self, scorer: PartitionScorer, item: ControlItem) -> list[DeadLetter]:
        """Apply a command at this point of the partition's stream (once, even on replay)."""
        log = self._log
        if item.seq <= log.applied_seq:
            return []  # replayed after a resume: it took effect the first time
        rejected: list[DeadLetter] = []
        try:
            stack = apply_command(log.stack, item)
        except ControlRejected as rej:
            stack = log.stack
            rejected = report_rejection(item.partition, item.seq, item.command, rej)
        log.record(item, stack, scorer.high_water)
        scorer.deployment = stack[-1]
        scorer.store.write([DEPLOYMENTS_KEY], [log.to_bytes()])
        _show_deployment(self._stats, scorer.deployment)
        return rejected

    def notify_at(self) -> datetime | None:
        if self._scorer is None:
            return None
        return datetime.fromtimestamp(self._next_sweep, UTC)

    def on_notify(self) -> tuple[Iterable[ScoredBatch], bool]:
        scorer = self._scorer
        if scorer is not None:
            safe = self._marks[0] if len(self._marks) == self._config.kept_marks else 0
            start = self._cursor or USER_PREFIX
            self._cursor, deleted = scorer.sweep(start, self._config.sweep_chunk, safe)
            if deleted:
                with self._stats.lock:
                    self._stats.swept += deleted
        self._next_sweep = self._clock() + self._config.sweep_interval
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, Any]:
        scorer = self._scorer
        if scorer is None:
            return {}
        started = time.perf_counter()
        scorer.store.sync()
        kept = self._config.kept_marks
        self._marks = (self._marks + [self._seen])[-kept:]
        if len(self._marks) == kept:
            scorer.prune_outbox(self._marks[0])
        seconds = time.perf_counter() - started
        disk = None if self._config.state_dir is None else self._disk_bytes(scorer.partition)
        self._stats.record_snapshot(scorer.partition, seconds, scorer.store.estimate_keys(), disk)
        return {
            "partition": scorer.partition,
            "high_water": scorer.high_water,
            "seen": self._seen,
            "marks": list(self._marks),
            "cursor": self._cursor,
        }

    def _disk_bytes(self, partition: int) -> int:
        assert self._config.state_dir is not None
        return dir_bytes(partition_dir(self._config.state_dir, partition))


def dir_bytes(path: Path) -> int:
    """Bytes of the files in a store's directory (SST files, WAL, manifest): a few stats.

    RocksDB deletes files in the background (after a compaction or a flush), so a
    file listed a moment ago may be gone when it is stat'ed: it no longer counts.
    """
    total = 0
    with os.scandir(path) as entries:
        for entry in entries:
            try:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


def logic_builder(config: PartitionConfig) -> Callable[[dict[str, Any] | None], PartitionLogic]:
    """The `stateful_batch` builder: a fresh or resumed logic per partition key."""

    def build(resume: dict[str, Any] | None) -> PartitionLogic:
        return PartitionLogic(config, resume or None)

    return build
