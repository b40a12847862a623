"""Tools around the job, never imported by it.

Benchmarks (the `bench` package, `snapshot_cost`), a producer of generated
transactions (`produce`), a topic reader (`tail`) and the test broker launcher
(`local_broker`). Run each as `python -m bytewax_fraud.tools.NAME --help`.
"""
