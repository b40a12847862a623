"""`python -m bytewax_fraud` whose exactly-once sink SIGKILLs its process at a named point.

Test-only: the production job, with `job.make_outputs` wrapped so that each
transactional sink partition kills the process around its N-th commit of this
process (`EOS_KILL_AT_COMMIT`, counted over all partitions):

- `EOS_KILL_POINT=before-commit`: everything of the transaction is produced,
  nothing committed (the transaction must be aborted by the next process);
- `EOS_KILL_POINT=after-commit`: committed, but Bytewax has not stored the
  snapshot of that epoch (the next process replays outputs already committed).

Run as `python tests/system/eos_kill_points.py [python -m bytewax_fraud args]`.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bytewax_fraud import __main__ as entry  # noqa: E402
from bytewax_fraud import job  # noqa: E402
from bytewax_fraud.connectors.kafka.transactional import (  # noqa: E402
    KafkaTransactionalSink,
    _TransactionalPartition,
)

POINT = os.environ.get("EOS_KILL_POINT", "")
AT = int(os.environ.get("EOS_KILL_AT_COMMIT", "0"))
#: Commits of this process, counted over all partitions (a worker commits its partitions
#: on threads of their own, so each takes its number atomically).
_commits = itertools.count(1)


def _kill_around(part: _TransactionalPartition) -> _TransactionalPartition:
    commit = part.commit

    def killing_commit() -> None:
        n = next(_commits) if part.is_open else 0
        if n == AT and POINT == "before-commit":
            os.kill(os.getpid(), signal.SIGKILL)
        commit()
        if n == AT and POINT == "after-commit":
            os.kill(os.getpid(), signal.SIGKILL)

    part.commit = killing_commit  # type: ignore[method-assign]
    return part


class KillingSink(KafkaTransactionalSink):
    """The production sink; its partitions die at the named point."""

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> Any:
        return _kill_around(super().build_part(step_id, for_part, resume_state))


_make_outputs = job.make_outputs


def _outputs(s: Any, fresh: bool) -> Any:
    out = _make_outputs(s, fresh)
    sink = out.exactly_once
    if sink is not None:
        sink.__class__ = KillingSink
    return out


job.make_outputs = _outputs  # type: ignore[assignment]

if __name__ == "__main__":
    sys.exit(entry.main(sys.argv[1:]))
