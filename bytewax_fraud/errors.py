"""One root for every error this package raises on purpose.

Each message says what went wrong *and* what to do about it.
"""


class FraudError(Exception):
    """Root of all bytewax-fraud errors."""


class SettingsError(FraudError):
    """A setting has an invalid value."""


class ModelContractError(FraudError):
    """An ONNX file does not follow the model contract."""


class DeviceError(FraudError):
    """The requested execution device cannot be used."""


class ModelChangedError(ModelContractError):
    """A model file's sha256 is not the one it was expected to have."""

    def __init__(self, message: str, actual_sha256: str) -> None:
        super().__init__(message)
        self.actual_sha256 = actual_sha256


class StateError(FraudError):
    """The state store is missing, damaged or belongs to another configuration."""


class RecoveryError(StateError):
    """State and recovery data do not match each other."""


class OutboxEntryError(StateError):
    """An outbox value is not an entry this version wrote (damaged bytes, or another layout)."""


class StateIOError(StateError):
    """The state store failed to read or write while running (an I/O error of its volume)."""


class StateDiskFull(StateIOError):
    """The volume holding the state store is full."""


class OutputError(FraudError):
    """An output file cannot be written (a full or failing volume)."""


class ClusterStalled(FraudError):
    """No epoch completed for FRAUD_STALL_TIMEOUT: a peer is unreachable or hung."""
