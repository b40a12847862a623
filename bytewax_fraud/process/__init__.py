"""What a running process adds around the dataflow, installed by the entry points only.

`services.py`: status line, metrics server, end-of-run summary, GC tuning;
`shutdown.py`: SIGTERM/SIGINT end the input for a clean, resumable stop;
`fatal.py`: a fatal error ends the run with one line naming cause and fix;
`progress.py`, `watchdog.py`: no epoch completed for FRAUD_STALL_TIMEOUT fails
`/livez` and ends the process with one line.
"""
