"""The outbox: the emitted prediction lines of a batch, one store value per batch.

An event that was applied to the state but whose prediction was lost in a
crash is replayed after the resume; its user's offset fence says it was applied,
and its prediction must come out again byte for byte. So every scored batch
writes its lines to the outbox in the same atomic write as the records.

One value holds a whole batch's lines (one put instead of one per event),
keyed by the batch's **largest** offset (`outbox_key`). Every offset of an
entry is at or below its key, so:

- an event's line is in the first entry at or after its offset (the entries of
  one partition's consecutive batches cover disjoint offset ranges); when a
  batch was split between two models, their entries interleave and the lookup
  reads on until it has found every offset it wants;
- pruning `[outbox_key(0), outbox_key(below))` drops only entries whose every
  offset is below `below`.

Layout (version 1): ``b"\\x00OB1"`` | u4 n | n x i8 offsets | n x u4 line ends |
the lines, concatenated (all little-endian). An event rejected after parsing (too
late, too far ahead: event_time.py) has an entry of its own, keyed by its offset:
``b"\\x00RJ1\\x00"`` | error class | ``\\x00`` | reason, so a replay rejects it again
with the same words. Any other value is refused (`OutboxEntryError`): damaged
bytes must never come out as a prediction line.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bytewax_fraud.errors import OutboxEntryError, StateError
from bytewax_fraud.state.base import OUTBOX_PREFIX, StateStore, outbox_key

MAGIC = b"\x00OB1"
#: The start of a rejection entry (never a JSON line, never a batch entry).
REJECTED = b"\x00RJ1\x00"
_END = bytes([OUTBOX_PREFIX[0] + 1])
#: Most entries read per scan while looking for replayed offsets (the first scan reads one).
_SCAN_CHUNK = 16


def encode_entry(offsets: npt.NDArray[np.int64], lines: Sequence[bytes]) -> tuple[bytes, bytes]:
    """(key, value) of one batch's outbox entry; `offsets` ascending, one line each."""
    n = len(lines)
    ends = np.cumsum(np.fromiter(map(len, lines), np.uint32, n), dtype=np.uint32)
    value = b"".join(
        [
            MAGIC,
            n.to_bytes(4, "little"),
            np.asarray(offsets, "<i8").tobytes(),
            ends.astype("<u4").tobytes(),
            *lines,
        ]
    )
    return outbox_key(int(offsets[-1])), value


def encode_rejection(error_class: str, reason: str) -> bytes:
    """The outbox value recording that the event at its key's offset was rejected, and why."""
    return REJECTED + error_class.encode() + b"\x00" + reason.encode()


def decode_rejection(value: bytes | None) -> tuple[str, str] | None:
    """(error class, reason) of a value written by `encode_rejection`; None for anything else."""
    if value is None or not value.startswith(REJECTED):
        return None
    cls, _, reason = value[len(REJECTED) :].partition(b"\x00")
    return cls.decode(), reason.decode()


def decode_entry(key: bytes, value: bytes) -> dict[int, bytes]:
    """The lines of one outbox entry by offset (a rejection has none).

    Raises:
        OutboxEntryError: The value is neither a batch entry nor a rejection.
        StateError: A batch entry's lines do not match its header.
    """
    if value.startswith(REJECTED):
        return {}
    if not value.startswith(MAGIC):
        offset = int.from_bytes(key[len(OUTBOX_PREFIX) :], "big")
        raise OutboxEntryError(
            f"the outbox entry at offset {offset} starts with {value[:8]!r}, not {MAGIC!r}: the"
            " store is damaged or was written by another version; restore the state directory"
            " from a backup or delete it (with the recovery directory) to start fresh"
        )
    n = int.from_bytes(value[4:8], "little")
    head = 8 + 12 * n
    if len(value) < head:
        raise StateError(
            f"an outbox entry is {len(value)} bytes, shorter than its header says: the store"
            " is damaged; restore the state directory from a backup or delete it to start fresh"
        )
    offsets = np.frombuffer(value, "<i8", n, 8).tolist()
    ends = np.frombuffer(value, "<u4", n, 8 + 8 * n).tolist()
    body = memoryview(value)[head:]
    if n and ends[-1] != len(body):
        raise StateError(
            "an outbox entry's lines do not match its header: the store is damaged; restore"
            " the state directory from a backup or delete it to start fresh"
        )
    out: dict[int, bytes] = {}
    start = 0
    for o, end in zip(offsets, ends, strict=True):
        out[o] = bytes(body[start:end])
        start = end
    return out


def read_lines(store: StateStore, offsets: Sequence[int]) -> dict[int, bytes]:
    """The outbox lines of `offsets` that the store holds (absent ones are left out).

    Reads entries in key order from the smallest offset wanted, and stops once
    every wanted offset is found (or the outbox ends).
    """
    want = set(offsets)
    found: dict[int, bytes] = {}
    if not want:
        return found
    start = outbox_key(min(want))
    chunk = 1  # usually one entry holds every replayed event of a batch
    while want:
        items = store.scan(start, _END, chunk)
        for key, value in items:
            for o, line in decode_entry(key, value).items():
                if o in want:
                    found[o] = line
                    want.discard(o)
        if len(items) < chunk:
            break
        start = items[-1][0] + b"\x00"
        chunk = min(2 * chunk, _SCAN_CHUNK)
    return found
