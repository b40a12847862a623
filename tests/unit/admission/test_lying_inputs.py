"""Inputs that lie, through the whole dataflow: each run against its clean twin.

A twin run gets the same well-formed events at the same offsets without the
faulty ones (offsets may have gaps, as in Kafka). Other users' records and
predictions must be identical, every rejected event must be a dead letter with
its reason, and the metrics must count them.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSource, run_main

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.job import build_dataflow
from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.records import DeadLetter, RawMessage
from bytewax_fraud.settings import load_settings
from bytewax_fraud.state.base import USER_PREFIX
from bytewax_fraud.state.codec import decode_one
from bytewax_fraud.state.manifest import partition_dir
from bytewax_fraud.state.rocksdb import RocksStore
from bytewax_fraud.status import STATS

PARTITIONS = 4
DAY = 86400.0
YEAR = 365.25 * DAY


@dataclass
class Stream:
    """Generated events (offsets per partition) with faulty messages inserted among them."""

    with_source_clock: bool
    users: int = 300
    msgs: list[tuple[RawMessage, bool]] = field(default_factory=list)  # (message, faulty)
    offsets: list[int] = field(default_factory=lambda: [0] * PARTITIONS)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # user -> last good event
    clock: list[float] = field(default_factory=lambda: [math.nan] * PARTITIONS)
    source: Iterator[bytes] = field(init=False)

    def __post_init__(self) -> None:
        self.source = TransactionGenerator(users=self.users, seed=4).events()

    def add(self, value: bytes, partition: int, faulty: bool, key: bytes | None = None) -> None:
        tx = json.loads(value)
        if not faulty:
            self.last[tx["user_id"]] = tx
            self.clock[partition] = float(tx["timestamp"])
        # A source clock like Kafka's record timestamp: the producer's (right) clock.
        stamp = self.clock[partition] if self.with_source_clock else None
        o = self.offsets[partition]
        self.offsets[partition] += 1
        self.msgs.append((RawMessage(value, key, "test", partition, o, stamp, 0), faulty))

    def good(self, events: int) -> None:
        """The next `events` of the generator's stream (time goes on across calls)."""
        for value, _ in zip(self.source, range(events), strict=False):
            self.add(value, partition_for(json.loads(value)["user_id"], PARTITIONS), False)

    def fault(self, user: str, partition: int | None = None, **changes: Any) -> None:
        """An event of `user` (a copy of its last one, changed) on its partition or another."""
        base = self.last.get(user) or next(iter(self.last.values()))
        n = sum(faulty for _, faulty in self.msgs)
        tx = {**base, "user_id": user, "transaction_id": f"fault-{n}", **changes}
        home = partition_for(user, PARTITIONS)
        self.add(json.dumps(tx).encode(), home if partition is None else partition, True)

    def busiest_users(self, n: int) -> list[str]:
        """Users with the most events so far."""
        count: dict[str, int] = {}
        for m, faulty in self.msgs:
            if not faulty:
                u = json.loads(m.value or b"")["user_id"]
                count[u] = count.get(u, 0) + 1
        return sorted(count, key=lambda u: (-count[u], u))[:n]


@dataclass
class Run:
    out: Path
    state: Path
    stats: dict[str, Any]

    def predictions(self) -> dict[str, dict[str, Any]]:
        lines = (self.out / "predictions.jsonl").read_text().splitlines()
        preds = [json.loads(x) for x in lines]
        for p in preds:
            p.pop("latency_ms")
        return {p["transaction_id"]: p for p in preds}

    def dead_letters(self) -> list[DeadLetter]:
        lines = (self.out / "dead_letters.jsonl").read_text().splitlines()
        return [DeadLetter.model_validate_json(x) for x in lines]

    def records(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for p in range(PARTITIONS):
            store = RocksStore(partition_dir(self.state, p))
            try:
                items = store.scan(USER_PREFIX, bytes([USER_PREFIX[0] + 1]), 10_000_000)
            finally:
                store.close()
            out.update({k[1:].decode(): decode_one(v) for k, v in items})
        return out


def run(tmp: Path, msgs: list[RawMessage], **kw: Any) -> Run:
    s = load_settings(
        partitions=PARTITIONS,
        state_dir=tmp / "state",
        output_dir=tmp / "out",
        status_interval=0,
        batch_max=256,
        **kw,
    )
    before = STATS.summary()
    epoch = timedelta(seconds=s.snapshot_interval)
    run_main(build_dataflow(s, source=TestingSource(msgs, batch_size=64)), epoch_interval=epoch)
    after = STATS.summary()
    keys = ("scored", "too_late", "too_early", "misrouted", "late_accepted", "expired", "swept")
    delta = {k: after[k] - before[k] for k in keys}  # type: ignore[operator]
    return Run(s.output_dir, s.state_dir, delta)


def twins(tmp: Path, stream: Stream, **kw: Any) -> tuple[Run, Run]:
    """The faulty run and its clean twin."""
    faulty = run(tmp / "faulty", [m for m, _ in stream.msgs], **kw)
    clean = run(tmp / "clean", [m for m, bad in stream.msgs if not bad], **kw)
    return faulty, clean


def _user_of(dead: DeadLetter) -> str:
    return str(json.loads(base64.b64decode(dead.value_b64))["user_id"])


def faulty_offsets(stream: Stream) -> set[tuple[int, int]]:
    return {(m.partition, m.offset) for m, bad in stream.msgs if bad}


def assert_only_rejections(faulty: Run, clean: Run, stream: Stream, error_class: str) -> None:
    """Same predictions and records as the twin; each faulty event a dead letter of its class."""
    assert faulty.predictions() == clean.predictions()
    assert faulty.records() == clean.records()
    dead = faulty.dead_letters()
    assert {(d.origin.partition, d.origin.offset) for d in dead} == faulty_offsets(stream)
    assert len(dead) == len(faulty_offsets(stream))
    assert {d.error_class for d in dead} == {error_class}
    assert clean.dead_letters() == []


@pytest.mark.parametrize("users_hit", [1, 5])
def test_far_future_events_are_dead_letters_and_change_no_one(
    tmp_path: Path, users_hit: int
) -> None:
    """One user or several, decades or hours ahead of the source's clock: all rejected."""
    stream = Stream(with_source_clock=True)
    stream.good(3000)
    victims = stream.busiest_users(users_hit)
    for i, user in enumerate(victims):
        stream.fault(user, timestamp=stream.last[user]["timestamp"] + 64 * YEAR - i)
        clock = stream.clock[partition_for(user, PARTITIONS)]  # the producer's clock
        stream.fault(user, timestamp=clock + 2 * 3600.0)
    stream.fault("u-newcomer", timestamp=4_000_000_000)  # a new user, 2096
    stream.good(3000)
    faulty, clean = twins(tmp_path, stream)
    assert_only_rejections(faulty, clean, stream, "TimestampTooFarAhead")
    reasons = [d.reason for d in faulty.dead_letters()]
    assert all("ahead of the record's source timestamp" in r for r in reasons)
    assert any("years ahead" in r for r in reasons) and any("2.0 h ahead" in r for r in reasons)
    assert faulty.stats["too_early"] == 2 * users_hit + 1
    assert faulty.stats["scored"] == clean.stats["scored"]


def test_outliers_without_a_source_clock_cannot_drag_the_sweep(tmp_path: Path) -> None:
    """No source timestamps, so no reference for "too far ahead": a few events stamped 2090
    are scored for their own users (whose later, real events are then too late for them:
    dead letters, counted). But the partition clock ignores them, so the TTL sweep deletes
    no one else (it used to delete every other user of the partition), and a steady advance
    of event time still expires and sweeps idle users."""
    stream = Stream(with_source_clock=False, users=400)
    stream.good(2000)
    outliers = stream.busiest_users(3)
    for user in outliers:
        stream.fault(user, timestamp=3_786_912_000)  # 2090
    stream.good(6000)
    # Short epochs: snapshots mark the offsets a resume could restart from, below which
    # the TTL sweep may delete (see operator.py).
    kw = {"state_ttl": "1h", "allowed_lateness": 0, "sweep_interval": 0.005, "sweep_chunk": 50}
    kw |= {"snapshot_interval": 0.05, "backup_interval": 0}
    faulty, clean = twins(tmp_path, stream, **kw)
    assert clean.dead_letters() == []
    assert clean.stats["expired"] > 100 and clean.stats["swept"] > 0  # the TTL works
    assert faulty.stats["swept"] > 0
    # Records the sweep may have deleted in either run (stale at the end) aside, the
    # other users' records are identical; so are their predictions.
    got, want = faulty.records(), clean.records()
    newest = max(float(r["last_ts"]) for r in want.values())  # type: ignore[arg-type]
    # The sweep deletes below the clock (the 100th newest event, ~2.4 h back here) - TTL.
    live = {u for u, r in want.items() if float(r["last_ts"]) >= newest - 3 * 3600}  # type: ignore[arg-type]
    assert len(live) > 50
    for u in live - set(outliers):
        assert got.get(u) == want[u], u
    others = {t: p for t, p in faulty.predictions().items() if p["user_id"] not in outliers}
    assert others == {t: p for t, p in clean.predictions().items() if p["user_id"] not in outliers}
    # The outliers' own later events: rejected against their (2090) last event, visibly.
    dead = faulty.dead_letters()
    assert dead and {d.error_class for d in dead} == {"TimestampTooLate"}
    assert {_user_of(d) for d in dead} <= set(outliers)
    assert all("before this user's last event (2090-01-01" in d.reason for d in dead)
    assert faulty.stats["too_late"] == len(dead)


def test_late_events_are_scored_within_lateness_and_dead_letters_beyond(tmp_path: Path) -> None:
    stream = Stream(with_source_clock=True)
    stream.good(3000)
    x = stream.busiest_users(1)[0]
    y = max((u for u in stream.last if u != x), key=lambda u: stream.last[u]["timestamp"])
    last_x, last_y = stream.last[x]["timestamp"], stream.last[y]["timestamp"]
    stream.fault(x, timestamp=last_x - 3 * 3600.0)  # 3 h late: within 1 day, scored
    # 30 h before y's last event, the newest of all: within a day of the partition clock
    # (100 events, ~12 h back here) but not of y's own clock.
    stream.fault(y, timestamp=last_y - 30 * 3600.0)
    stream.fault("u-newcomer", timestamp=last_y - 5 * DAY)  # days behind the partition clock
    stream.good(3000)
    faulty, clean = twins(tmp_path, stream)
    got, want = faulty.predictions(), clean.predictions()
    late_x = [p for t, p in got.items() if t not in want]
    assert [p["user_id"] for p in late_x] == [x]  # the late event within lateness was scored
    assert {t: p for t, p in got.items() if p["user_id"] != x} == {
        t: p for t, p in want.items() if p["user_id"] != x
    }
    records, clean_records = faulty.records(), clean.records()
    assert {u: r for u, r in records.items() if u != x} == {
        u: r for u, r in clean_records.items() if u != x
    }
    # Its user's clock did not move back: same last event time, and no extra expiry.
    assert records[x]["last_ts"] == clean_records[x]["last_ts"]
    assert faulty.stats["expired"] == clean.stats["expired"]
    dead = {d.origin.offset: d for d in faulty.dead_letters()}
    assert len(dead) == 2 and {d.error_class for d in dead.values()} == {"TimestampTooLate"}
    by_user = {
        json.loads(base64.b64decode(d.value_b64))["user_id"]: d.reason for d in dead.values()
    }
    assert "30.0 h before this user's last event" in by_user[y]
    assert "behind the partition's event-time clock" in by_user["u-newcomer"]
    assert faulty.stats["too_late"] == 2 and faulty.stats["late_accepted"] == 1


def test_misrouted_events_are_dead_letters_naming_both_partitions(tmp_path: Path) -> None:
    """Users of one partition arriving on another (a producer keying by card number):
    never scored against split state, every one a WrongPartition dead letter."""
    stream = Stream(with_source_clock=False)
    stream.good(3000)
    users = stream.busiest_users(6)
    for i, user in enumerate(users):
        home = partition_for(user, PARTITIONS)
        stream.fault(user, partition=(home + 1 + i % 3) % PARTITIONS)
    stream.fault("u-stranger", partition=(partition_for("u-stranger", PARTITIONS) + 1) % 4)
    stream.good(3000)
    faulty, clean = twins(tmp_path, stream)
    assert_only_rejections(faulty, clean, stream, "WrongPartition")
    for d in faulty.dead_letters():
        user = _user_of(d)
        home = partition_for(user, PARTITIONS)
        assert f"belongs to partition {home}" in d.reason
        assert f"arrived on partition {d.origin.partition}" in d.reason
        assert d.stage == "routing"
    assert faulty.stats["misrouted"] == len(users) + 1


def test_context_corpus_entries_are_dead_letters_where_they_lie(
    tmp_path: Path, context_corpus: list[dict[str, Any]]
) -> None:
    """Each corpus entry of a context class, placed in that context, after 150 events of
    each partition (the partition clock is defined), with a source clock."""
    stream = Stream(with_source_clock=True, users=200)
    stream.good(800)
    assert min(stream.offsets) > 150
    for case in context_corpus:
        key = base64.b64decode(case["key_b64"]) if "key_b64" in case else None
        user = json.loads(case["value"])["user_id"]
        p = partition_for(key.decode(), PARTITIONS) if key else partition_for(user, PARTITIONS)
        stream.add(case["value"], p, True, key)
    stream.good(200)
    faulty, clean = twins(tmp_path, stream)
    assert faulty.predictions() == clean.predictions()
    dead = {base64.b64decode(d.value_b64): d for d in faulty.dead_letters()}
    assert len(dead) == len(context_corpus)
    for case in context_corpus:
        d = dead[case["value"]]
        assert (d.stage, d.error_class) == (case["stage"], case["error_class"]), case["kind"]
        assert case["reason_contains"] in d.reason, (case["kind"], d.reason)
        if "key_b64" in case:
            assert d.key_b64 == case["key_b64"]
