"""A slow replay after a resume must still find its predictions in the outbox.

After a crash the store is ahead of the last snapshot. Snapshot marks (below which the
outbox is pruned) must follow the input the step has been given, not the store's
high-water mark: otherwise snapshots taken while the replay is still catching up
prune entries that a second crash's replay needs.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from bytewax_fraud import partition_logic
from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.parse import parse_batch
from bytewax_fraud.partition_logic import PartitionBatch, PartitionConfig, PartitionLogic
from bytewax_fraud.records import EventBatch, RawBatch, ScoredBatch
from bytewax_fraud.state.manifest import ensure_manifest
from bytewax_fraud.state.outbox import read_lines

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def gru() -> LoadedModel:
    return ModelLoader().load(MODELS / "fraud_gru.onnx")


def _batches(n: int, size: int = 100) -> list[EventBatch]:
    values = list(itertools.islice(TransactionGenerator(users=300, seed=3).events(), n))
    out = []
    for lo in range(0, n, size):
        chunk: list[bytes | None] = list(values[lo : lo + size])
        raw = RawBatch("g", 0, np.arange(lo, lo + len(chunk), dtype=np.int64), chunk, None, None, 0)
        events, dead = parse_batch(raw)
        assert events is not None and not dead
        out.append(events)
    return out


def _lines(logic: PartitionLogic, batches: list[EventBatch]) -> list[bytes]:
    out, _ = logic.on_batch([PartitionBatch(0, list(batches))])
    return [line for x in out if isinstance(x, ScoredBatch) for line in x.lines]


def _replay_config(tmp_path: Path, gru: LoadedModel) -> PartitionConfig:
    """One partition's store in `tmp_path`, keeping the marks of three snapshots."""
    ensure_manifest(tmp_path, 1, 10)
    return PartitionConfig(
        state_dir=tmp_path,
        model=gru,
        window=10,
        ttl_seconds=30 * 86400.0,
        batch_max=1024,
        sweep_interval=3600.0,
        sweep_chunk=100,
        restore_model=lambda ref: gru,
        kept_marks=3,
    )


def test_snapshots_during_a_slow_replay_keep_what_the_next_replay_needs(
    tmp_path: Path, gru: LoadedModel
) -> None:
    config = _replay_config(tmp_path, gru)
    batches = _batches(3000)
    first = PartitionLogic(config, None)
    _lines(first, batches[:10])
    snap = first.snapshot()  # the input is at offset 1000
    emitted = _lines(first, batches[10:])  # the store gets to 3000, then a crash
    assert first._scorer is not None
    first._scorer.store.close()

    second = PartitionLogic(config, snap)
    replayed = _lines(second, batches[10:11])  # the replay gets to 1100 only...
    snaps = [second.snapshot() for _ in range(3)]  # ...while three snapshots go by
    assert second._scorer is not None
    kept = read_lines(second._scorer.store, list(range(1100, 3000)))
    assert sorted(kept) == list(range(1100, 3000))
    second._scorer.store.close()

    third = PartitionLogic(config, snaps[-1])  # a second crash: resume at 1100
    again = _lines(third, batches[11:])
    assert replayed + again == emitted  # byte for byte, from the outbox
    assert third._scorer is not None
    third._scorer.store.close()


def test_a_resume_state_ahead_of_the_input_prunes_nothing_the_replay_needs(
    tmp_path: Path, gru: LoadedModel
) -> None:
    """Bytewax may resume a logic from a row newer than its input's (a run killed while its
    epoch was being snapshotted): the input replays from below the logic's marks."""
    config = _replay_config(tmp_path, gru)
    batches = _batches(2000)
    first = PartitionLogic(config, None)
    _lines(first, batches[:10])  # the input's snapshot says 1000...
    emitted = _lines(first, batches[10:])
    ahead = first.snapshot()  # ...but the logic's row, from the crashed run, says 2000
    assert first._scorer is not None
    first._scorer.store.close()

    second = PartitionLogic(config, {**ahead, "marks": [2000, 2000]})
    replayed = _lines(second, batches[10:12])  # the replay starts at 1000
    second.snapshot()  # three marks: the outbox is pruned below the oldest
    assert second._marks[0] <= 1000
    assert second._scorer is not None
    kept = read_lines(second._scorer.store, list(range(1200, 2000)))
    assert sorted(kept) == list(range(1200, 2000))
    again = _lines(second, batches[12:])
    assert replayed + again == emitted  # byte for byte, from the outbox
    second._scorer.store.close()


def test_disk_bytes_skip_a_file_deleted_between_listing_and_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RocksDB deletes SST files in the background; a snapshot must not fail on one."""
    (tmp_path / "000007.sst").write_bytes(b"x" * 100)
    (tmp_path / "000009.sst").write_bytes(b"y" * 30)
    listed = list(os.scandir(tmp_path))
    (tmp_path / "000007.sst").unlink()  # a compaction removed it after the listing
    monkeypatch.setattr(partition_logic.os, "scandir", lambda _: contextlib.nullcontext(listed))
    assert partition_logic.dir_bytes(tmp_path) == 30


def test_each_logic_counts_into_the_stats_it_is_handed(gru: LoadedModel) -> None:
    """Metrics are handed in, not a process global: two runs in one process count apart."""
    from bytewax_fraud.status import STATS, RunStats

    def config(stats: RunStats) -> PartitionConfig:
        return PartitionConfig(
            state_dir=None,
            model=gru,
            window=10,
            ttl_seconds=30 * 86400.0,
            batch_max=1024,
            sweep_interval=3600.0,
            sweep_chunk=100,
            restore_model=lambda ref: gru,
            stats=stats,
        )

    before = STATS.summary()["scored"]
    mine, yours = RunStats(), RunStats()
    batches = _batches(300)
    _lines(PartitionLogic(config(mine), None), batches[:1])
    _lines(PartitionLogic(config(yours), None), batches)
    assert (mine.scored, yours.scored) == (100, 300)
    assert mine.model == yours.model == gru.label
    assert STATS.summary()["scored"] == before
