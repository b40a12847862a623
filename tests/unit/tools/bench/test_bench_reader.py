"""The outside reader's latency: each received message joined to its event's produce stamp."""

from __future__ import annotations

import numpy as np

from bytewax_fraud.partitioning import partition_for
from bytewax_fraud.tools.bench.reader import format_reader, latencies_ms


def test_each_message_is_joined_to_its_own_stamp_by_partition_and_offset() -> None:
    keys: list[bytes | None] = [f"u{i}".encode() for i in range(40)]
    pilot = 10
    stamps = [100.0 + i for i in range(30)]  # one second apart, after the pilot
    parts = [partition_for(k.decode(), 3) for k in keys if k]
    offsets, seen = [], [0, 0, 0]
    for p in parts:
        offsets.append(seen[p])
        seen[p] += 1
    # Message i is received 5 ms + i µs after its stamp, in reverse order of sending.
    rows = np.asarray(
        [(parts[i], offsets[i], stamps[i - pilot] + 0.005 + i * 1e-6) for i in range(39, -1, -1)]
    )
    lat = latencies_ms(keys, stamps, rows, 3, pilot, warmup_s=2.0)
    # The pilot is not counted, nor the events stamped in the first 2 s.
    want = sorted(5.0 + i * 1e-3 for i in range(pilot + 2, 40))
    assert np.allclose(sorted(lat), want)


def test_the_report_names_each_variant_and_its_margin_over_the_broker() -> None:
    point = {"offered_per_s": 10.0, "counted": 5, "p50_ms": 1.0, "p999_ms": 3.0, "load": 0.5}
    reader = {
        "max_events_per_s": 20.0,
        "commit_interval_s": 1.0,
        "points": [
            {**point, "variant": "broker", "p99_ms": 2.0},
            {**point, "variant": "alo", "p99_ms": 9.5},
        ],
        "p99_over_broker_ms": {"50%": {"alo": 7.5}},
    }
    text = "\n".join(format_reader(reader))
    assert "alo +7.5 ms" in text and "broker" in text
