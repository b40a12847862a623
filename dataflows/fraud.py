"""The fraud-scoring job, configured from `FRAUD_*` environment variables.

Run it with `python -m bytewax.run dataflows.fraud`; list the settings with
`python -m bytewax_fraud --help`.
"""

from bytewax_fraud.flow import build_dataflow

flow = build_dataflow()
