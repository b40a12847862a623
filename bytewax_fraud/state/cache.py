"""Users' records kept in memory between batches: read-through, write-through.

A batch reads the record of every user in it with one multi-get, which costs
~1.5-2 us per key in RocksDB even when the record sits in its memtable. Most
users of a batch were written a few batches ago, so the scorer keeps the bytes
it last wrote (or read) for each user in a dict, bounded in bytes, and asks the
store only for the others. The store stays the truth: every record is written
to it as before, and the cache only ever holds what the store holds (records
the TTL sweep deletes are dropped from it too), so a crash loses nothing and
changes no decision.

When the bound is reached the cache is emptied and fills again from the next
batches: with more active users than fit, it costs one dict clear per fill.
"""

from __future__ import annotations

from collections.abc import Sequence

from bytewax_fraud.state.base import StateStore

#: Bytes a cached record costs beyond its value: the dict slot, the key and the bytes header.
_ENTRY_OVERHEAD = 120


class RecordCache:
    """The last known bytes of users' records, at most about `max_bytes` of them (0: off)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._records: dict[bytes, bytes] = {}
        self.hits = 0
        self.misses = 0

    def get_many(self, keys: Sequence[bytes], store: StateStore) -> list[bytes | None]:
        """The records of `keys` (None: absent), from memory where known, else from `store`."""
        if self.max_bytes <= 0:
            return store.get_many(keys)
        got = list(map(self._records.get, keys))
        if None in got:
            missing = [i for i, v in enumerate(got) if v is None]
            found = store.get_many([keys[i] for i in missing])
            for i, v in zip(missing, found, strict=True):
                got[i] = v
            self.misses += len(missing)
            self.hits += len(keys) - len(missing)
            self._records.update(
                (keys[i], v) for i, v in zip(missing, found, strict=True) if v is not None
            )
        else:
            self.hits += len(keys)
        return got

    def put(self, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Remember the records just written to the store; empty the cache past its bound."""
        if self.max_bytes <= 0 or not keys:
            return
        records = self._records
        records.update(zip(keys, values, strict=True))
        if len(records) * (len(values[0]) + _ENTRY_OVERHEAD) > self.max_bytes:
            records.clear()

    def drop(self, keys: Sequence[bytes]) -> None:
        """Forget `keys` (the store deleted them)."""
        for k in keys:
            self._records.pop(k, None)

    def __len__(self) -> int:
        return len(self._records)
