"""The fraud-scoring job, configured from `FRAUD_*` environment variables.

Run it with `python -m bytewax.run dataflows.fraud` (Bytewax's own flags), or
with `python -m bytewax_fraud`, which also applies FRAUD_RECOVERY_DIR and the
snapshot settings. `python -m bytewax_fraud --help` lists every setting.
"""

import os
import sys

from bytewax_fraud.errors import SettingsError
from bytewax_fraud.flow import build_job
from bytewax_fraud.settings import load_settings

settings = load_settings()
if settings.recovery_dir is not None and not (
    {"-r", "--recovery-directory"} & set(sys.argv) or os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")
):
    raise SettingsError(
        "FRAUD_RECOVERY_DIR is set, but `python -m bytewax.run` only applies its own flags. Run"
        " `python -m bytewax_fraud` instead (it applies the FRAUD_* recovery settings), or pass"
        f" `-r {settings.recovery_dir} -s SECONDS -b SECONDS` to bytewax.run"
    )
flow = build_job(settings).flow
