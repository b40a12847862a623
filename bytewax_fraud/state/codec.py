"""Versioned byte codec of user records, vectorised over batches.

A record is a packed little-endian struct; a batch of records is one numpy
structured array, so decoding N records is one `frombuffer` and encoding is
one `tobytes`. No pickle.

Layout (version 1), 32-byte header then three arrays:

    u1 version | u1 flags | u1 window_n | u1 count | u2 hidden_size | u2 reserved
    u8 model_tag | f8 last_ts | i8 last_offset
    f4 amounts[window_n] | u4 merchants[window_n] | f4 hidden[hidden_size]

`model_tag` is the first 8 bytes of the sha256 of the model that produced the
hidden state; `last_offset` is the input offset of the last applied event
(recovery fencing: an event at or below it was applied already).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bytewax_fraud.errors import StateError

VERSION = 1
HEADER_BYTES = 32
NO_OFFSET = -1


#: The fixed 32-byte header of every record, whatever its window and hidden size.
_HEADER_FIELDS: list[tuple[str, str]] = [
    ("version", "u1"),
    ("flags", "u1"),
    ("window_n", "u1"),
    ("count", "u1"),
    ("hidden_size", "<u2"),
    ("reserved", "<u2"),
    ("model_tag", "<u8"),
    ("last_ts", "<f8"),
    ("last_offset", "<i8"),
]
_HEAD = np.dtype(_HEADER_FIELDS)


@functools.lru_cache(maxsize=64)
def record_dtype(window: int, hidden: int) -> np.dtype:
    """The structured dtype of one record for this window and hidden size."""
    fields: list[tuple[str, str] | tuple[str, str, tuple[int, ...]]] = [
        *_HEADER_FIELDS,
        ("amounts", "<f4", (window,)),
        ("merchants", "<u4", (window,)),
    ]
    if hidden:
        fields.append(("hidden", "<f4", (hidden,)))
    return np.dtype(fields)


@dataclass
class UserStates:
    """The state of B users as columns (mutable numpy arrays: the hot path updates in place)."""

    count: npt.NDArray[np.int64]
    last_ts: npt.NDArray[np.float64]
    last_offset: npt.NDArray[np.int64]
    model_tag: npt.NDArray[np.uint64]
    amounts: npt.NDArray[np.float32]
    merchants: npt.NDArray[np.uint32]
    hidden: npt.NDArray[np.float32]

    @classmethod
    def empty(cls, n: int, window: int, hidden: int) -> UserStates:
        """`n` fresh users: no history, zero hidden state."""
        return cls(
            count=np.zeros(n, np.int64),
            last_ts=np.zeros(n, np.float64),
            last_offset=np.full(n, NO_OFFSET, np.int64),
            model_tag=np.zeros(n, np.uint64),
            amounts=np.zeros((n, window), np.float32),
            merchants=np.zeros((n, window), np.uint32),
            hidden=np.zeros((n, hidden), np.float32),
        )

    def take(self, rows: npt.NDArray[np.intp]) -> UserStates:
        """The states of `rows` only (copies)."""
        return UserStates(
            count=self.count[rows],
            last_ts=self.last_ts[rows],
            last_offset=self.last_offset[rows],
            model_tag=self.model_tag[rows],
            amounts=self.amounts[rows],
            merchants=self.merchants[rows],
            hidden=self.hidden[rows],
        )

    def reset(self, rows: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> None:
        """Forget the history of `rows` (TTL expiry, model change); keeps the offset fence."""
        self.count[rows] = 0
        self.last_ts[rows] = 0.0
        self.amounts[rows] = 0.0
        self.merchants[rows] = 0
        self.hidden[rows] = 0.0


def decode(values: list[bytes | None], window: int, hidden: int, tag: int) -> UserStates:
    """Decode records (None = absent) into columns for the current model.

    A record whose hidden state came from another model (tag or size differs)
    keeps its window and offset but gets a zero hidden state: hidden states
    belong to one model version.
    """
    n = len(values)
    dt = record_dtype(window, hidden)
    if n and None not in values and {len(v) for v in values} == {dt.itemsize}:  # type: ignore[arg-type]
        # Every user known, in this layout (the common case): columns straight from the records.
        recs = np.frombuffer(b"".join(values), dtype=dt)  # type: ignore[arg-type]
        _check(recs["version"], recs["window_n"], window)
        return _columns(recs, hidden, tag)
    out = UserStates.empty(n, window, hidden)
    same = [i for i, v in enumerate(values) if v is not None and len(v) == dt.itemsize]
    if same:
        recs = np.frombuffer(b"".join(values[i] for i in same), dtype=dt)  # type: ignore[misc]
        _check(recs["version"], recs["window_n"], window)
        idx = np.asarray(same, dtype=np.intp)
        _fill(out, idx, recs, hidden, tag)
    for i, v in enumerate(values):
        if v is not None and len(v) != dt.itemsize:
            _fill(out, np.asarray([i]), _decode_other(v, window), hidden, tag)
    return out


def _decode_other(value: bytes, window: int) -> np.ndarray:
    if len(value) < HEADER_BYTES:
        raise StateError(
            f"a state record is {len(value)} bytes, shorter than its header: the store is damaged;"
            " restore the state directory from a backup or delete it to start fresh"
        )
    head = np.frombuffer(value[:HEADER_BYTES], dtype=_HEAD)
    _check(head["version"], head["window_n"], window)
    dt = record_dtype(int(head["window_n"][0]), int(head["hidden_size"][0]))
    if len(value) != dt.itemsize:
        raise StateError(
            f"a state record is {len(value)} bytes but its header says {dt.itemsize}: the store is"
            " damaged; restore the state directory from a backup or delete it to start fresh"
        )
    return np.frombuffer(value, dtype=dt)


def decode_headers(values: list[bytes]) -> np.ndarray:
    """The fixed headers of many records (any window/hidden size) as one structured array."""
    return np.frombuffer(b"".join(v[:HEADER_BYTES] for v in values), dtype=_HEAD)


def _check(version: np.ndarray, window_n: np.ndarray, window: int) -> None:
    if (version != VERSION).any():
        bad = int(version[version != VERSION][0])
        raise StateError(
            f"a state record has codec version {bad}, this build reads version {VERSION}:"
            " run the release that wrote it, or delete the state directory to start fresh"
        )
    if (window_n != window).any():
        raise StateError(
            f"the state was written with a window of {int(window_n[window_n != window][0])}"
            f" amounts but FRAUD_WINDOW={window}: set FRAUD_WINDOW back, or use a new state dir"
        )


def _columns(recs: np.ndarray, hidden: int, tag: int) -> UserStates:
    """The states of `recs`, all of the current layout (what `_fill` gives for every row)."""
    same_model = (recs["model_tag"] == np.uint64(tag)) & (int(recs["hidden_size"][0]) == hidden)
    return UserStates(
        count=recs["count"].astype(np.int64),
        last_ts=recs["last_ts"].astype(np.float64),
        last_offset=recs["last_offset"].astype(np.int64),
        model_tag=np.where(same_model, np.uint64(tag), np.uint64(0)),
        amounts=recs["amounts"].astype(np.float32),
        merchants=recs["merchants"].astype(np.uint32),
        hidden=np.where(same_model[:, None], recs["hidden"], np.float32(0.0))
        if hidden
        else np.zeros((len(recs), 0), np.float32),
    )


def _fill(out: UserStates, idx: np.ndarray, recs: np.ndarray, hidden: int, tag: int) -> None:
    out.count[idx] = recs["count"]
    out.last_ts[idx] = recs["last_ts"]
    out.last_offset[idx] = recs["last_offset"]
    out.amounts[idx] = recs["amounts"]
    out.merchants[idx] = recs["merchants"]
    rec_hidden = int(recs["hidden_size"][0])
    same_model = (recs["model_tag"] == np.uint64(tag)) & (rec_hidden == hidden)
    out.model_tag[idx] = np.where(same_model, np.uint64(tag), np.uint64(0))
    if hidden and rec_hidden == hidden:
        out.hidden[idx] = np.where(same_model[:, None], recs["hidden"], 0.0)


def encode(states: UserStates, tag: int) -> list[bytes]:
    """Encode every row of `states` as one record, stamped with the current model's tag."""
    n, window = states.amounts.shape
    hidden = states.hidden.shape[1]
    recs = np.zeros(n, dtype=record_dtype(window, hidden))
    recs["version"] = VERSION
    recs["window_n"] = window
    recs["count"] = states.count
    recs["hidden_size"] = hidden
    recs["model_tag"] = tag
    recs["last_ts"] = states.last_ts
    recs["last_offset"] = states.last_offset
    recs["amounts"] = states.amounts
    recs["merchants"] = states.merchants
    if hidden:
        recs["hidden"] = states.hidden
    raw = recs.tobytes()
    size = recs.dtype.itemsize
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def decode_one(value: bytes) -> dict[str, object]:
    """A record as plain values, for inspection tools."""
    rec = _decode_other(value, int(value[2]))[0]
    out: dict[str, object] = {name: rec[name] for name in rec.dtype.names or ()}
    count = int(rec["count"])
    n = int(rec["window_n"])
    out["amounts"] = [float(a) for a in rec["amounts"][n - count :]]
    out["merchants"] = [int(m) for m in rec["merchants"][n - count :]]
    if "hidden" in out:
        out["hidden"] = np.asarray(rec["hidden"]).tolist()
    for k in ("version", "flags", "window_n", "count", "hidden_size", "reserved", "last_offset"):
        out[k] = int(out[k])  # type: ignore[call-overload]
    out["model_tag"] = f"{int(rec['model_tag']):016x}"
    out["last_ts"] = float(rec["last_ts"])
    return out
