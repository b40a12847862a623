"""An in-memory store with the same semantics as the RocksDB one (tests, baselines)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence


class MemoryStore:
    """A dict-backed `StateStore`."""

    def __init__(self) -> None:
        self._data: dict[bytes, bytes] = {}

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        get = self._data.get
        return [get(k) for k in keys]

    def write(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        deletes: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        for begin, end in ranges:
            self.delete_range(begin, end)
        self._data.update(zip(keys, values, strict=True))
        for k in deletes:
            self._data.pop(k, None)

    def delete_range(self, begin: bytes, end: bytes) -> None:
        for k in [k for k in self._data if begin <= k < end]:
            del self._data[k]

    def scan(self, start: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        keys = sorted(self._data)
        i = bisect.bisect_left(keys, start)
        out: list[tuple[bytes, bytes]] = []
        for k in keys[i:]:
            if k >= end or len(out) >= limit:
                break
            out.append((k, self._data[k]))
        return out

    def sync(self) -> None:
        pass

    def estimate_keys(self) -> int:
        return len(self._data)

    def close(self) -> None:
        pass
