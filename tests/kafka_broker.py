"""The tests' broker launcher: re-exported from `bytewax_fraud.kafka.local_broker`.

tansu's `memory://` storage loses everything when the process restarts, so
outages are simulated by pausing the process (SIGSTOP/SIGCONT), never by
restarting it.
"""

from __future__ import annotations

from bytewax_fraud.tools.local_broker import (
    Broker,
    free_port,
    tansu_binary,
    tansu_broker,
    wait_for_metadata,
)

__all__ = ["Broker", "free_port", "tansu_binary", "tansu_broker", "wait_for_metadata"]
