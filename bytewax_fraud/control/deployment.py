"""Which model serves which user, and how that is stored with a partition's state.

A deployment is a primary model plus an optional candidate that serves a
`rollout` fraction of users. The split is a stable hash of the user id (CRC-32,
independent of the partitioning hash), so the same users go to the candidate
every time and in every process. Deployments form a stack; `rollback` pops it.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from bytewax_fraud.control.commands import (
    ControlItem,
    ControlRejected,
    LoadCommand,
    RollbackCommand,
)
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.records import DeadLetter, Origin

MAX_STACK = 20
MAX_SWITCHES = 1000
DEPLOYMENTS_KEY = b"m:deployments"


def rollout_bucket(user_id: str) -> float:
    """A user's stable position in [0, 1) for rollouts."""
    return zlib.crc32(b"rollout:" + user_id.encode("utf-8")) / 2**32


@dataclass(frozen=True)
class Deployment:
    """The models serving a partition."""

    primary: LoadedModel
    candidate: LoadedModel | None = None
    rollout: float = 0.0

    def on_candidate(self, user_ids: Sequence[str]) -> npt.NDArray[np.bool_]:
        """Which of these users the candidate serves."""
        if self.candidate is None:
            return np.zeros(len(user_ids), bool)
        return np.fromiter(
            (rollout_bucket(u) < self.rollout for u in user_ids), bool, count=len(user_ids)
        )

    def label(self) -> str:
        """For status lines: `primary` or `primary + candidate@rollout`."""
        if self.candidate is None:
            return self.primary.label
        return f"{self.primary.label} + {self.candidate.label}@{self.rollout:g}"

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (models by id, sha256 and path)."""
        return {
            "primary": _ref(self.primary),
            "candidate": _ref(self.candidate) if self.candidate else None,
            "rollout": self.rollout,
        }


def _ref(m: LoadedModel) -> dict[str, str]:
    return {"model_id": m.model_id, "sha256": m.sha256, "path": m.path}


def apply(stack: list[Deployment], item: ControlItem) -> list[Deployment]:
    """The deployment stack after a validated command."""
    cmd = item.command
    if isinstance(cmd, LoadCommand):
        assert item.model is not None
        current = stack[-1]
        if cmd.rollout >= 1.0:
            new = Deployment(item.model)
        else:
            new = Deployment(current.primary, item.model, cmd.rollout)
        return (stack + [new])[-MAX_STACK:]
    if len(stack) < 2:
        raise ControlRejected(
            "NothingToRollBack", "rollback: no earlier deployment to return to; load a model"
        )
    return stack[:-1]


@dataclass
class DeploymentLog:
    """What a partition persists: the stack, the last applied command, and each switch point."""

    stack: list[Deployment]
    applied_seq: int = -1
    switches: list[dict[str, Any]] = field(default_factory=list)

    def record(self, item: ControlItem, stack: list[Deployment], from_offset: int) -> None:
        """Note that `item` took effect for events at or after `from_offset`."""
        self.stack = stack
        self.applied_seq = item.seq
        self.switches = (
            self.switches
            + [{"seq": item.seq, "from_offset": from_offset, "serving": stack[-1].label()}]
        )[-MAX_SWITCHES:]

    def to_bytes(self) -> bytes:
        """JSON bytes for the partition's store."""
        return json.dumps(
            {
                "version": 1,
                "applied_seq": self.applied_seq,
                "stack": [d.describe() for d in self.stack],
                "switches": self.switches,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_bytes(
        cls, value: bytes, load: Callable[[dict[str, str]], LoadedModel]
    ) -> DeploymentLog:
        """Restore a log; `load` turns a model reference back into a loaded model."""
        raw = json.loads(value)
        stack = [
            Deployment(
                load(d["primary"]),
                load(d["candidate"]) if d["candidate"] else None,
                float(d["rollout"]),
            )
            for d in raw["stack"]
        ]
        return cls(stack, int(raw["applied_seq"]), list(raw["switches"]))


def report_rejection(
    partition: int,
    seq: int,
    command: LoadCommand | RollbackCommand | bytes,
    rej: ControlRejected,
    source: str = "control",
) -> list[DeadLetter]:
    """The dead letter reporting a rejected control command, from partition 0's copy only.

    Every partition receives every command (and rejects it alike), so the
    rejection is reported once, by partition 0.
    """
    if partition != 0:
        return []
    raw = command if isinstance(command, bytes) else command.model_dump_json().encode()
    return [
        DeadLetter(
            stage="control",
            error_class=rej.error_class,
            reason=rej.reason[:500],
            origin=Origin(source=source, partition=0, offset=seq),
            key=None,
            value_b64=base64.b64encode(raw).decode(),
        )
    ]
