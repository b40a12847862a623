"""Background syncs of the stores' write-ahead logs, so that a snapshot's own sync is short.

A snapshot makes its partition's writes durable by syncing the store's write-ahead
log (`RocksStore.sync`, an fsync) on the worker thread. An fsync costs about 1 ms
per MB written since the one before, so after a 10 s epoch at 11k events/s it took
~13 ms per partition, one partition after another, and every event in flight
waited for all of them (the at-least-once reader's p99 spikes). One thread per
process syncs every registered store every `INTERVAL_S`; a snapshot's sync then
finds a fraction of a second of writes left. It only makes writes durable sooner:
the snapshot still syncs, so what a snapshot covers is exactly as durable as before.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from typing import Protocol

#: Seconds between background syncs of each store.
INTERVAL_S = 0.25


class Syncable(Protocol):
    def sync_quietly(self) -> None:
        """Sync the write-ahead log; keep a failure for the next foreground sync to raise."""


class WalSyncer:
    """Syncs the registered stores every `interval_s` on a daemon thread, started on demand.

    The thread stops at interpreter exit (`atexit`), before the stores' libraries are torn
    down. A forked child starts empty: its parent's stores are not its own to sync.
    """

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._lock = threading.Lock()
        #: Held weakly: a store its partition let go of is not kept open by its syncs.
        self._stores: weakref.WeakSet[Syncable] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        os.register_at_fork(after_in_child=self._forget)
        atexit.register(self.stop)

    def add(self, store: Syncable) -> None:
        """Sync `store` from now on, until `remove`."""
        with self._lock:
            self._stores.add(store)
            if self._thread is None:
                self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="wal-sync", daemon=True
                )
                self._thread.start()

    def remove(self, store: Syncable) -> None:
        """Stop syncing `store` (a sync already under way finishes first: see `RocksStore`)."""
        with self._lock:
            self._stores.discard(store)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._stores = weakref.WeakSet()
        self._thread = None

    def stop(self) -> None:
        """End the thread (a sync under way finishes first)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            self._sync_all(stop)

    def _sync_all(self, stop: threading.Event) -> None:
        # Each store is held only while it is synced (and by no frame while the thread
        # waits), so one its partition let go of is released at once.
        with self._lock:
            refs = [weakref.ref(s) for s in self._stores]
        for ref in refs:
            store = ref()
            if stop.is_set():
                return
            if store is not None:
                store.sync_quietly()
            del store


#: The process's syncer (partition stores register with it: `partition_logic.open_store`).
SYNCER = WalSyncer()
