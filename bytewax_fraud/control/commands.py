"""Control commands as they arrive on the control input (JSON objects)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from bytewax_fraud.inference.runtime import LoadedModel


class LoadCommand(BaseModel):
    """Load a model file and serve it to a `rollout` fraction of users (1.0: everyone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Literal["load"]
    model_id: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")]
    path: Annotated[str, Field(min_length=1, max_length=4096)]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    rollout: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0


class RollbackCommand(BaseModel):
    """Return to the deployment before the current one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: Literal["rollback"]


Command = Annotated[LoadCommand | RollbackCommand, Field(discriminator="command")]
_ADAPTER: TypeAdapter[LoadCommand | RollbackCommand] = TypeAdapter(Command)


class ControlRejected(Exception):
    """A control command that cannot be applied; the current model keeps serving."""

    def __init__(self, error_class: str, reason: str) -> None:
        super().__init__(reason)
        self.error_class = error_class
        self.reason = reason


def parse_command(value: bytes) -> LoadCommand | RollbackCommand:
    """Decode one command, or raise `ControlRejected` saying what is wrong."""
    try:
        return _ADAPTER.validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "command"
        kind = "InvalidJson" if first["type"] == "json_invalid" else "InvalidCommand"
        raise ControlRejected(
            kind,
            f"{where}: {first['msg']} (expected e.g. "
            '{"command": "load", "model_id": "m2", "path": "models/m2.onnx", "rollout": 1.0}'
            ' or {"command": "rollback"})',
        ) from None


@dataclass(frozen=True, slots=True)
class ControlMessage:
    """A raw line/record of the control input, delivered to one state partition."""

    partition: int
    seq: int  # position in the control log (line number or Kafka offset)
    value: bytes
    source: str


@dataclass(frozen=True, slots=True)
class ControlItem:
    """A validated command for one state partition (a load carries its loaded model)."""

    partition: int
    seq: int
    command: LoadCommand | RollbackCommand
    model: LoadedModel | None
