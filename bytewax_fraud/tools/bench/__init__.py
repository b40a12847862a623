"""The benchmark: `python -m bytewax_fraud.tools.bench` (see `cli` for what a run measures)."""
