"""Training and offline evaluation of the fraud models (needs the `train` extra for torch)."""
