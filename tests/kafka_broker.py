"""The tests' broker launcher: re-exported from `bytewax_fraud.tools.local_broker`.

The session's broker is Apache Kafka (one KRaft node from the jars of
`.ci/install-kafka`). `Broker.stop()` / `Broker.start()` restart it with its log
dir kept; `pause()` / `resume()` freeze it (SIGSTOP/SIGCONT).
"""

from __future__ import annotations

from bytewax_fraud.tools.local_broker import (
    INSTALL_HINT,
    Broker,
    BrokerUnavailable,
    apache_kafka,
    free_port,
    tansu_binary,
    tansu_broker,
    wait_for_metadata,
)

__all__ = [
    "INSTALL_HINT",
    "Broker",
    "BrokerUnavailable",
    "apache_kafka",
    "free_port",
    "tansu_binary",
    "tansu_broker",
    "wait_for_metadata",
]
