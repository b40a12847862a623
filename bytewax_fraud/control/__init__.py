"""Model control: load / roll back models by command while the stream keeps flowing.

commands.py (wire schema) -> reader.py (control log merged into every input
partition) -> gate.py (validate, load, warm up) -> deployment.py (which model
serves which user, persisted with the partition's state).
"""
