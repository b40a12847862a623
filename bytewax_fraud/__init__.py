"""bytewax-fraud: stateful streaming ML inference on Bytewax.

The data flow, one module per stage:

    generator / Kafka -> parse -> partitioning -> state (RocksDB) + features
      -> model (ONNX Runtime, waves across users) -> predictions / dead letters
"""

__version__ = "0.1.0"
