"""Test-only entry point: the production job (`python -m bytewax_fraud`) with faults injected.

Production code carries no test knobs. A system test that needs a fault runs
this file instead of `python -m bytewax_fraud` (`recovery_harness.start` does so
whenever it is given a `TEST_FAULT_*` variable). It wraps production objects in
this process only, then runs the real entry point, `bytewax_fraud.__main__.main`,
with the same settings, recovery, services and signal handling:

- `TEST_FAULT_KILL_AT_SNAPSHOT=N`: SIGKILL the process inside the N-th partition
  snapshot it takes (after the store is synced and the outbox pruned, before
  Bytewax writes the snapshot).
- `TEST_FAULT_INPUTS_EVERY=N`: the generator's stream with events that lie
  (late, far ahead, misrouted) at every N-th offset (`fault_inputs.py`);
  `TEST_FAULT_INPUTS_TWIN=1` leaves those offsets empty instead (the clean twin).

Adding an injection point (e.g. a kill inside a Kafka sink's write): write a
function here that wraps the production method, as `kill_at_snapshot` wraps
`PartitionLogic.snapshot` (count calls in the wrapper, never in production
code), call it from `install` under a new `TEST_FAULT_*` variable, and start
the job with `recovery_harness.start(dirs, TEST_FAULT_...=...)`. Prove the kill
hit a running job with `recovery_harness.assert_interrupted`.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fault_inputs import FaultPlan, FaultyGeneratorSource  # noqa: E402

import bytewax_fraud.__main__ as entry  # noqa: E402
from bytewax_fraud.partition_logic import PartitionLogic  # noqa: E402
from bytewax_fraud.settings import Settings  # noqa: E402

PREFIX = "TEST_FAULT_"


def kill_at_snapshot(n: int) -> None:
    """SIGKILL this process inside its `n`-th snapshot of a partition that holds state."""
    taken = 0
    original = PartitionLogic.snapshot

    @functools.wraps(original)
    def snapshot(self: PartitionLogic) -> dict[str, Any]:
        nonlocal taken
        state = original(self)
        if state:  # a logic that has not seen its partition yet snapshots nothing
            taken += 1
            if taken == n:
                os.kill(os.getpid(), signal.SIGKILL)
        return state

    PartitionLogic.snapshot = snapshot  # type: ignore[method-assign]


def lying_inputs(plan: FaultPlan) -> None:
    """Build the job with the generator's stream plus the plan's faults (or gaps)."""
    build_job: Callable[..., Any] = entry.build_job

    def build(settings: Settings, **kwargs: Any) -> Any:
        if settings.kafka_bootstrap_servers:
            raise SystemExit(f"{PREFIX}INPUTS_* needs the generator, not Kafka")
        source = FaultyGeneratorSource(
            users=settings.users,
            seed=settings.seed,
            partitions=settings.partitions,
            events=settings.events,
            batch_max=settings.batch_max,
            plan=plan,
        )
        return build_job(settings, source=source, **kwargs)

    entry.build_job = build  # type: ignore[assignment]


def install(env: dict[str, str]) -> None:
    """Apply every fault the `TEST_FAULT_*` variables ask for; refuse unknown ones."""
    known = {"KILL_AT_SNAPSHOT", "INPUTS_EVERY", "INPUTS_TWIN"}
    unknown = {k for k in env if k.startswith(PREFIX) and k[len(PREFIX) :] not in known}
    if unknown:
        raise SystemExit(f"unknown fault variable(s) {sorted(unknown)}; known: {sorted(known)}")
    if env.get(PREFIX + "KILL_AT_SNAPSHOT"):
        kill_at_snapshot(int(env[PREFIX + "KILL_AT_SNAPSHOT"]))
    if env.get(PREFIX + "INPUTS_EVERY"):
        twin = env.get(PREFIX + "INPUTS_TWIN", "0") not in ("", "0")
        lying_inputs(FaultPlan(int(env[PREFIX + "INPUTS_EVERY"]), twin))


if __name__ == "__main__":
    install(dict(os.environ))
    sys.exit(entry.main(sys.argv[1:]))
