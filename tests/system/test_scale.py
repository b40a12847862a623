"""Scale: 1,000,000 events for 100,000 users through the embedded default, state on disk."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from recovery_harness import ROOT, JobDirs, run


def test_a_million_events_for_100k_users(tmp_path: Path) -> None:
    dirs = JobDirs(tmp_path)
    err = run(dirs, timeout=600, FRAUD_EVENTS=1_000_000, FRAUD_USERS=100_000)
    assert "scored 1,000,000 events" in err

    users: set[str] = set()
    count = 0
    with open(dirs.out / "predictions.jsonl", "rb") as f:
        for line in f:
            users.add(json.loads(line)["user_id"])
            count += 1
    assert count == 1_000_000
    assert len(users) > 95_000  # heavy-tailed activity: a few quiet users have no event yet

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "bytewax_fraud.state", "--state-dir", str(dirs.state), *args],
            check=True,
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout

    stats = json.loads(cli("stats"))
    assert stats["users"] == len(users)
    assert sum(p["users"] for p in stats["per_partition"].values()) == len(users)
    some_user = sorted(users)[len(users) // 2]
    record = json.loads(cli("show", some_user))
    assert record["user_id"] == some_user
    assert 1 <= record["count"] <= 10 and len(record["amounts"]) == record["count"]
    assert record["hidden_size"] == 128 and len(record["hidden"]) == 128
