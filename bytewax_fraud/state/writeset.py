"""What one step writes to a partition's store, gathered and then written atomically."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from bytewax_fraud.state.base import StateStore


@dataclass(slots=True)
class WriteSet:
    """Puts, deletes and range deletes for one atomic `StateStore.write`.

    Each step of a batch adds what it produces; nothing is written until `apply`.
    """

    keys: list[bytes] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)
    deletes: list[bytes] = field(default_factory=list)
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)

    def put(self, key: bytes, value: bytes) -> None:
        """Set one key."""
        self.keys.append(key)
        self.values.append(value)

    def put_many(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Set several keys."""
        if len(keys) != len(values):
            raise ValueError(f"{len(keys)} keys but {len(values)} values")
        self.keys += keys
        self.values += values

    def delete_range(self, begin: bytes, end: bytes) -> None:
        """Delete every key in [begin, end) (before the puts of the same write)."""
        self.ranges.append((begin, end))

    def __bool__(self) -> bool:
        return bool(self.keys or self.deletes or self.ranges)

    def apply(self, store: StateStore) -> None:
        """Write everything gathered in one atomic write (nothing when empty)."""
        if self:
            store.write(self.keys, self.values, self.deletes, self.ranges)
