"""Building the dataflow starts nothing: servers and threads belong to the entry points."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from bytewax_fraud.job import build_dataflow
from bytewax_fraud.settings import load_settings


def test_building_a_dataflow_binds_no_port_and_starts_no_thread(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    s = load_settings(
        events=10,
        state_dir=tmp_path / "state",
        output_dir=tmp_path / "out",
        metrics_port=port,
        status_interval=1,
    )
    threads = {t.name for t in threading.enumerate()}
    flow = build_dataflow(s)
    assert flow.flow_id == "fraud"
    assert {t.name for t in threading.enumerate()} == threads
    with socket.socket() as again:
        again.bind(("0.0.0.0", port))  # still free: no metrics server was started
