"""Run the fraud-scoring job: `python -m bytewax_fraud [-w N] [-i ID -a HOSTS]`.

Unlike `python -m bytewax.run dataflows.fraud`, this applies the FRAUD_*
recovery settings (FRAUD_RECOVERY_DIR, FRAUD_SNAPSHOT_INTERVAL,
FRAUD_BACKUP_INTERVAL), creating the recovery partitions when they are missing.
Both stop gracefully on SIGTERM or SIGINT (see `bytewax_fraud.process.shutdown`).
"""

from __future__ import annotations

import argparse
import sys

from bytewax.run import cli_main

from bytewax_fraud.job import build_job
from bytewax_fraud.process import fatal, shutdown
from bytewax_fraud.process.services import start_services
from bytewax_fraud.settings import load_settings, settings_help

_EPILOG = """
Examples:
  python -m bytewax_fraud                                  # embedded default, runs until stopped
  FRAUD_EVENTS=1000000 FRAUD_USERS=100000 python -m bytewax_fraud
  FRAUD_RECOVERY_DIR=recovery python -m bytewax_fraud -w 2  # resumable, 2 worker threads
  python -m bytewax_fraud -i 0 -a "host0:2101;host1:2101"   # process 0 of a 2-process cluster

"""


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bytewax_fraud",
        description=(
            "Stateful fraud scoring on Bytewax: per-user state in RocksDB, micro-batched ONNX"
            " inference. Configured through FRAUD_* environment variables (below)."
        ),
        epilog=_EPILOG + settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-w", "--workers", type=int, default=1, help="worker threads per process")
    parser.add_argument("-i", "--process-id", type=int, default=None, help="this process's id")
    parser.add_argument(
        "-a", "--addresses", default=None, help="all processes' host:port, separated by ';'"
    )
    args = parser.parse_args(argv)
    if (args.process_id is None) != (args.addresses is None):
        parser.error("-i/--process-id and -a/--addresses go together")
    fatal.install()
    try:
        settings = load_settings()
        job = build_job(settings, process_id=args.process_id)
        start_services(settings, job.progress, job.epoch_interval.total_seconds())
        shutdown.install()  # SIGTERM/SIGINT: end the input, finish, snapshot, exit 0
        cli_main(
            job.flow,
            workers_per_process=args.workers,
            process_id=args.process_id,
            addresses=args.addresses.split(";") if args.addresses else None,
            epoch_interval=job.epoch_interval,
            recovery_config=job.recovery,
        )
    except Exception as exc:
        if not fatal.report(exc):
            raise  # not a known fatal error: a bug, keep the traceback
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
