"""The store interface and the key layout shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

USER_PREFIX = b"u"
OUTBOX_PREFIX = b"o"
META_PREFIX = b"m"
#: One past the largest input offset the partition has seen (applied or replayed).
HIGH_WATER_KEY = b"m:high_water"
#: Input below this offset can no longer be replayed: its outbox entries (and swept
#: records) are gone. A run that starts a partition from the beginning needs 0 here.
REPLAY_FLOOR_KEY = b"m:replay_floor"


def user_key(user_id: str) -> bytes:
    """Store key of a user's record."""
    return USER_PREFIX + user_id.encode("utf-8")


def outbox_key(offset: int) -> bytes:
    """Store key of the emitted prediction for an input offset (big-endian sorts by offset)."""
    return OUTBOX_PREFIX + offset.to_bytes(8, "big", signed=False)


def outbox_keys(offsets: npt.NDArray[np.int64]) -> list[bytes]:
    """`outbox_key` of each offset (one conversion for the whole array)."""
    raw = np.asarray(offsets).astype(">u8").tobytes()
    return [OUTBOX_PREFIX + raw[i : i + 8] for i in range(0, len(raw), 8)]


class StateStore(Protocol):
    """A partition's key-value store: raw bytes in, raw bytes out, atomic batch writes."""

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Values of `keys` in order; None where absent."""
        ...

    def write(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        deletes: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Delete every key in each [begin, end) of `ranges`, then put every (key, value)
        and delete `deletes`, all in one atomic write."""
        ...

    def delete_range(self, begin: bytes, end: bytes) -> None:
        """Delete every key in [begin, end)."""
        ...

    def scan(self, start: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` items with start <= key < end, in key order."""
        ...

    def sync(self) -> None:
        """Make every write so far durable (fsync the write-ahead log)."""
        ...

    def estimate_keys(self) -> int:
        """An estimate of the number of keys (users and outbox entries)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...
