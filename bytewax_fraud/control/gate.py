"""Admit a model named by a load command: path, size, then the loader (hash, contract, warm-up)."""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from bytewax_fraud.control.commands import (
    ControlItem,
    ControlMessage,
    ControlRejected,
    LoadCommand,
    RollbackCommand,
    parse_command,
)
from bytewax_fraud.errors import ModelChangedError, ModelContractError
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel

MAX_MODEL_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ModelGate:
    """Checks load commands against the allowed model directory and the contract."""

    model_dir: Path
    loader: ModelLoader = ModelLoader()

    def resolve(self, path: str) -> Path:
        """The real file a command names, refused if it lies outside `model_dir`.

        A relative path is tried against the working directory, then against the
        model directory. Symlinks are followed before the check, and `..` too.
        """
        root = self.model_dir.resolve()
        raw = Path(path)
        candidates = [raw] if raw.is_absolute() else [Path.cwd() / raw, root / raw]
        reals = [c.resolve() for c in candidates]
        for real in reals:
            if real.is_relative_to(root) and real.is_file():
                return real
        if any(r.exists() for r in reals) or not any(r.is_relative_to(root) for r in reals):
            raise ControlRejected(
                "ModelPathOutsideDir",
                f"{path} resolves to {reals[-1]}, outside the model directory {root}"
                " (FRAUD_MODEL_DIR); copy the model there",
            )
        raise ControlRejected("ModelNotFound", f"no model file at {path} in {root}")

    def admit(self, cmd: LoadCommand) -> LoadedModel:
        """Load and warm up the model, or raise `ControlRejected` with the reason."""
        real = self.resolve(cmd.path)
        if real.stat().st_size > MAX_MODEL_BYTES:
            raise ControlRejected("ModelTooLarge", f"{cmd.path} is larger than 2 GiB")
        try:
            return self.loader.load(real, model_id=cmd.model_id, sha256=cmd.sha256)
        except ModelChangedError as exc:
            raise ControlRejected(
                "Sha256Mismatch",
                f"{cmd.path} has sha256 {exc.actual_sha256}, the command says {cmd.sha256}: the"
                " file is not the one the command was written for",
            ) from None
        except ModelContractError as exc:
            text = str(exc)
            kind = "ExternalData" if "external data" in text else "ContractMismatch"
            if "not a valid ONNX" in text or "not an ONNX" in text or "cannot parse" in text:
                kind = "NotOnnx"
            raise ControlRejected(kind, text) from None
        except Exception as exc:  # onnxruntime refuses a graph the contract check accepted
            raise ControlRejected("ModelLoadFailed", f"{cmd.path}: {exc}") from None


@dataclass(frozen=True)
class _Admitted:
    """A validated command; its model is held weakly, so that only deployments keep it alive."""

    seq: int
    command: LoadCommand | RollbackCommand
    model: weakref.ref[LoadedModel] | None

    def item(self, partition: int) -> ControlItem | None:
        """The item for one partition, or None if the model has been released since."""
        model = self.model() if self.model is not None else None
        if self.model is not None and model is None:
            return None
        return ControlItem(partition, self.seq, self.command, model)


class CommandValidator:
    """Turns control messages into items, validating each command once per process.

    Every partition receives every command; the first to ask validates it (and
    loads its model), the others get the same outcome. The outcome keeps the model
    only weakly: once no partition's deployments use it, its session is released,
    and a partition that reaches the command after that loads the file again.
    """

    def __init__(self, gate: ModelGate) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self._done: dict[int, _Admitted | ControlRejected] = {}

    def validate(self, msg: ControlMessage) -> ControlItem | ControlRejected:
        """The item for `msg.partition`, or the rejection (the same for every partition)."""
        with self._lock:
            outcome = self._done.get(msg.seq)
            if isinstance(outcome, ControlRejected):
                return outcome
            item = outcome.item(msg.partition) if outcome is not None else None
            if item is not None:
                return item
            checked = self._check(msg)
            if isinstance(checked, ControlItem):
                ref = weakref.ref(checked.model) if checked.model is not None else None
                self._done[msg.seq] = _Admitted(checked.seq, checked.command, ref)
            else:
                self._done[msg.seq] = checked
            return checked

    def _check(self, msg: ControlMessage) -> ControlItem | ControlRejected:
        try:
            cmd = parse_command(msg.value)
            model = self._gate.admit(cmd) if isinstance(cmd, LoadCommand) else None
        except ControlRejected as rej:
            return rej
        return ControlItem(msg.partition, msg.seq, cmd, model)
