"""The fraud-scoring job, configured from `FRAUD_*` environment variables.

Run it with `python -m bytewax.run dataflows.fraud` (Bytewax's own flags), or
with `python -m bytewax_fraud`, which also applies FRAUD_RECOVERY_DIR and the
snapshot settings. `python -m bytewax_fraud --help` lists every setting. Both stop
gracefully on SIGTERM or SIGINT (see `bytewax_fraud.process.shutdown`).
"""

import os
import sys

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.job import build_job
from bytewax_fraud.process import fatal, shutdown
from bytewax_fraud.process.services import start_services
from bytewax_fraud.settings import load_settings


def _bytewax_process_id() -> int | None:
    """The process id `bytewax.run` was given (-i, BYTEWAX_PROCESS_ID or the pod name)."""
    argv = sys.argv
    for flag in ("-i", "--process-id"):
        if flag in argv[:-1]:
            return int(argv[argv.index(flag) + 1])
    if os.environ.get("BYTEWAX_PROCESS_ID"):
        return int(os.environ["BYTEWAX_PROCESS_ID"])
    pod, statefulset = (
        os.environ.get("BYTEWAX_POD_NAME"),
        os.environ.get("BYTEWAX_STATEFULSET_NAME"),
    )
    if pod and statefulset:
        return int(pod.replace(statefulset + "-", ""))
    return None


def _bytewax_epoch_seconds() -> float:
    """The epoch interval `bytewax.run` applies: `-s` with recovery, else Bytewax's 10 s."""
    argv = sys.argv
    if not (
        {"-r", "--recovery-directory"} & set(argv) or os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
    ):
        return 10.0
    for flag in ("-s", "--snapshot-interval"):
        if flag in argv[:-1]:
            return float(argv[argv.index(flag) + 1])
    return float(os.environ.get("BYTEWAX_SNAPSHOT_INTERVAL", "10"))


fatal.install()  # a fatal error ends the run with one line (FRAUD_DEBUG=1: the traceback)
settings = load_settings()
if settings.recovery_dir is not None and not (
    {"-r", "--recovery-directory"} & set(sys.argv) or os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
):
    raise SettingsError(
        "FRAUD_RECOVERY_DIR is set, but `python -m bytewax.run` only applies its own flags. Run"
        " `python -m bytewax_fraud` instead (it applies the FRAUD_* recovery settings), or pass"
        f" `-r {settings.recovery_dir} -s SECONDS -b SECONDS` to bytewax.run"
    )
job = build_job(settings, process_id=_bytewax_process_id())
flow = job.flow
start_services(settings, job.progress, _bytewax_epoch_seconds())
shutdown.install()  # SIGTERM/SIGINT: end the input, finish, snapshot, exit 0
