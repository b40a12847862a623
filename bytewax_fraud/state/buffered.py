"""A write-back buffer in front of a partition's store.

Each scored batch ends in one atomic write (records, outbox entries, the
high-water mark). Sent to RocksDB one by one, those writes cost a skiplist
insert and a Python `WriteBatch.put` per key, and every batch's multi-get goes
to RocksDB even for users written a moment ago. Here the writes of consecutive
batches coalesce in memory (a user's record is kept once, however often it
changed) and reach the store as one atomic write when the buffer is full, and
before any snapshot, scan or range delete. A flush always happens between two
batches, so the store always holds the state as of some batch boundary, which
is all the recovery design needs (see `partition_logic.py`): what a crash loses from
the buffer is input after the last snapshot, which is replayed and scored again
(the same scores; only `latency_ms` differs from the first emission, where the
write-through default reads replayed predictions back from the outbox byte for
byte). Off by default (`FRAUD_STATE_BUFFER_MB=0`).
"""

from __future__ import annotations

from collections.abc import Sequence

from bytewax_fraud.state.base import StateStore


class BufferedStore:
    """A `StateStore` that holds writes in memory until `max_bytes` of values are written."""

    def __init__(self, inner: StateStore, max_bytes: int) -> None:
        self.inner = inner
        self.max_bytes = max_bytes
        self._puts: dict[bytes, bytes] = {}
        self._deletes: set[bytes] = set()
        self._written = 0  # value bytes written since the last flush (an upper bound)

    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        puts, deletes = self._puts, self._deletes
        if not puts and not deletes:
            return self.inner.get_many(keys)
        get = puts.get
        out = [get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None and keys[i] not in deletes]
        if missing:
            found = self.inner.get_many([keys[i] for i in missing])
            for i, v in zip(missing, found, strict=True):
                out[i] = v
        return out

    def write(
        self,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        deletes: Sequence[bytes] = (),
        ranges: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        if ranges:  # the buffer goes first, then this write as one atomic batch
            self.flush()
            self.inner.write(keys, values, deletes, ranges)
            return
        if self._deletes:
            self._deletes.difference_update(keys)
        self._puts.update(zip(keys, values, strict=True))
        for k in deletes:
            self._puts.pop(k, None)
            self._deletes.add(k)
        self._written += sum(map(len, values))
        if self._written >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Write everything buffered to the store, atomically."""
        if self._puts or self._deletes:
            self.inner.write(list(self._puts), list(self._puts.values()), list(self._deletes))
            self._puts = {}
            self._deletes = set()
        self._written = 0

    def delete_range(self, begin: bytes, end: bytes) -> None:
        self.flush()
        self.inner.delete_range(begin, end)

    def scan(self, start: bytes, end: bytes, limit: int) -> list[tuple[bytes, bytes]]:
        self.flush()
        return self.inner.scan(start, end, limit)

    def sync(self) -> None:
        self.flush()
        self.inner.sync()

    def estimate_keys(self) -> int:
        return self.inner.estimate_keys()

    def close(self) -> None:
        self.flush()
        self.inner.close()
