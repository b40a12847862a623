"""The benchmark: `python -m bytewax_fraud.tools.bench` (`cli` says what a run measures).

How a run flows: `cli` reads the options into a `config.BenchConfig` and runs
every variant in turn. Each variant is a function that starts subprocesses
(`runner`: start, reap, read their output) and returns a `config.Result`:
`embedded` (the job on generated input), `baselines` (the hand-written loops of
`handwritten`, the HTTP endpoint of `external_http`), `kafka` (the job between
two topics, the broker alone; `broker` sets up the broker and the topics),
`file` (the job and a loop on one input file), `reader` (latency as an outside
consumer sees it). `report` turns the results into tables, `plot` into the
picture. `skew` (hot keys) and `eos` (exactly-once) are benchmarks of their own
on the same variants.
"""
