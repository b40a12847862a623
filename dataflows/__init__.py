"""Runnable dataflows: `python -m bytewax.run dataflows.fraud`."""
