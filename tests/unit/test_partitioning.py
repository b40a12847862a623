"""murmur2 compatibility with Kafka, and the even spread of partitions over workers."""

from __future__ import annotations

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, cluster_main

from bytewax_fraud.partitioning import (
    bytewax_route_hash,
    murmur2,
    partition_for,
    partition_of_routing_key,
    routing_key,
)

# From Kafka's UtilsTest.testMurmur2.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("data", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_partition_for_is_kafkas_to_positive_modulo() -> None:
    assert partition_for("21", 7) == (-973932308 & 0x7FFFFFFF) % 7
    counts = [0] * 4
    for i in range(4000):
        counts[partition_for(f"u{i:07d}", 4)] += 1
    assert min(counts) > 900


def test_routing_keys_round_trip() -> None:
    for p in range(64):
        assert partition_of_routing_key(routing_key(p)) == p
        assert bytewax_route_hash(routing_key(p)) % 840 == p % 840


class _WorkerSink(DynamicSink):
    def __init__(self, seen: list[tuple[str, int]]) -> None:
        self.seen = seen

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition:
        seen = self.seen

        class Part(StatelessSinkPartition):
            def write_batch(self, items: list) -> None:
                seen.extend((k, worker_index) for k, _ in items)

        return Part()


@pytest.mark.parametrize("workers", [2, 3])
def test_bytewax_routes_partition_p_to_worker_p_mod_workers(workers: int) -> None:
    seen: list[tuple[str, int]] = []
    keys = [routing_key(p) for p in range(8)]
    flow = Dataflow("route")
    s = op.input("in", flow, TestingSource(keys))
    k = op.key_on("k", s, lambda x: x)
    r = op.stateful_map("sm", k, lambda st, v: (st, v))
    op.output("out", r, _WorkerSink(seen))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert sorted(seen) == sorted((routing_key(p), p % workers) for p in range(8))
