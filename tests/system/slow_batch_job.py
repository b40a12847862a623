"""Test-only entry point: `python -m bytewax_fraud` in which one batch takes long.

Run as `python tests/system/slow_batch_job.py [-i ID -a ADDRS]`. With
SLOW_BATCH_PAUSE_S set, the parse step sleeps that long, once, in its
SLOW_BATCH_AT-th call (default 20): the worker thread is blocked the whole time,
as in a batch that takes that long to score. At exit it prints
`slow-batch-job: longest epoch gap X s` (the watchdog's signal).
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from typing import Any

import bytewax_fraud.__main__ as entry
import bytewax_fraud.flow as flow_module
import bytewax_fraud.job as job_module


def main() -> int:
    pause = float(os.environ.get("SLOW_BATCH_PAUSE_S", "0"))
    left = [int(os.environ.get("SLOW_BATCH_AT", "20"))]
    ingest, build_job = flow_module._ingest_batch, entry.build_job

    def slow_ingest(*args: Any) -> Any:
        left[0] -= 1
        if left[0] == 0 and pause > 0:
            print(f"slow-batch-job: pausing {pause} s", file=sys.stderr, flush=True)
            time.sleep(pause)
        return ingest(*args)

    def build(*args: Any, **kwargs: Any) -> job_module.Job:
        job = build_job(*args, **kwargs)

        def report() -> None:
            gap = job.progress.view().longest_gap
            print(f"slow-batch-job: longest epoch gap {gap:.2f} s", file=sys.stderr, flush=True)

        atexit.register(report)
        return job

    flow_module._ingest_batch = slow_ingest
    entry.build_job = build
    return entry.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
