"""Background syncs of the stores' write-ahead logs (wal_sync.py) on real RocksDB."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import pytest

from bytewax_fraud.errors import StateIOError
from bytewax_fraud.state.rocksdb import RocksStore
from bytewax_fraud.state.wal_sync import WalSyncer


def _until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.005)
    return False


def _fill(store: RocksStore, n: int = 200) -> None:
    for i in range(n):
        store.write([f"k{i}".encode()], [os.urandom(700)])


def test_a_registered_store_is_synced_until_it_is_closed(tmp_path: Path) -> None:
    syncer = WalSyncer(interval_s=0.005)
    store = RocksStore(tmp_path / "db", syncer=syncer)
    other = RocksStore(tmp_path / "other")  # not registered: never synced in the background
    try:
        _fill(store)
        _fill(other)
        assert _until(lambda: store.background_syncs >= 3)
        store.close()
        done = store.background_syncs
        time.sleep(0.1)
        assert store.background_syncs == done
        assert (other.background_syncs, store._background_error) == (0, None)
    finally:
        syncer.stop()
        other.close()


def test_stores_opened_and_closed_while_it_syncs_meet_no_error(tmp_path: Path) -> None:
    syncer = WalSyncer(interval_s=0.0005)
    try:
        stores = []
        for i in range(30):
            store = RocksStore(tmp_path / f"db{i}", syncer=syncer)
            _fill(store, 50)
            stores.append(store)
            store.sync()  # the snapshot's own sync, beside the thread's
            if i % 3 == 2:
                stores.pop(0).close()  # closed while the thread may be syncing it
        assert _until(lambda: all(s.background_syncs > 0 for s in stores))
        assert all(s._background_error is None for s in stores)
        for store in stores:
            store.close()
    finally:
        syncer.stop()


def test_a_store_its_partition_let_go_of_is_not_kept_open(tmp_path: Path) -> None:
    syncer = WalSyncer(interval_s=0.005)
    try:
        store = RocksStore(tmp_path / "db", syncer=syncer)
        _fill(store, 10)
        del store
        gc.collect()
        assert _until(lambda: len(syncer._stores) == 0)
        # Its lock is free again: the same directory opens.
        again = RocksStore(tmp_path / "db")
        assert again.get_many([b"k3"])[0] is not None
        again.close()
    finally:
        syncer.stop()


def test_stop_ends_the_thread(tmp_path: Path) -> None:
    syncer = WalSyncer(interval_s=0.005)
    store = RocksStore(tmp_path / "db", syncer=syncer)
    thread = syncer._thread
    assert thread is not None and thread.is_alive()
    syncer.stop()
    assert not thread.is_alive()
    store.close()


def test_an_open_waits_for_a_store_this_process_is_still_releasing(tmp_path: Path) -> None:
    # A background sync holds a dropped store for the length of the sync; an open of its
    # directory meanwhile waits for the release instead of failing on RocksDB's lock
    # ("lock hold by current process"). Here another thread holds it for 50 ms.
    store = RocksStore(tmp_path / "db")
    store.write([b"k"], [b"v"])
    held = threading.Thread(target=lambda s=store: time.sleep(0.05))
    held.start()
    del store
    again = RocksStore(tmp_path / "db")
    assert again.get_many([b"k"]) == [b"v"]
    again.close()
    held.join()


class _FailingSync:
    """Stands in for the database's WAL sync failing (the volume, not RocksDB, failed)."""

    def __init__(self, db: object) -> None:
        self.db = db

    def flush_wal(self, sync: bool) -> None:
        raise Exception("IO error: While fdatasync: input/output error")

    def close(self) -> None:
        self.db.close()  # type: ignore[attr-defined]


def test_a_failed_background_sync_fails_the_next_snapshot_sync_by_name(tmp_path: Path) -> None:
    syncer = WalSyncer(interval_s=0.005)
    store = RocksStore(tmp_path / "db", syncer=syncer)
    try:
        real = store._db
        store._db = _FailingSync(real)  # type: ignore[assignment]
        assert _until(lambda: store._background_error is not None)
        store._db = real  # the volume recovers: a new fsync would succeed...
        with pytest.raises(StateIOError, match="cannot sync its write-ahead log: IO error"):
            store.sync()  # ...but the failed one may have lost writes: the snapshot must not count
        store.sync()  # raised once; syncing goes on
    finally:
        syncer.stop()
        store.close()
