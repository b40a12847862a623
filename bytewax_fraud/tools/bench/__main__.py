"""Entry point of `python -m bytewax_fraud.tools.bench`."""

import sys

from bytewax_fraud.tools.bench.cli import main

sys.exit(main())
