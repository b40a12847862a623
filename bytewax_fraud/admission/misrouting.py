"""Events that arrived on another partition than their user's are rejected, never scored.

State partition = input partition, and the offset fence assumes all of a user's
events arrive, in order, on the partition that holds the user's state: the one
murmur2 of the `user_id` names (Kafka's default partitioner on key = user_id).
A producer that keys by something else (a card number, a random key) or uses
librdkafka's default CRC32 partitioner would split every user's history over
several partitions. Such an event becomes a `WrongPartition` dead letter naming
the partition it arrived on and the one it belongs to. It is not re-routed: its
offset belongs to the partition it arrived on, so the other partition's offset
fence (and its recovery) could not place it.

The check runs on every event, so it is vectorised: murmur2 over the batch's
user ids at once (`partitions_of`). A small batch (a paced stream read every few
milliseconds) looks its users up in a bounded table of homes computed before: a
dozen numpy calls would cost more than the whole check.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bytewax_fraud.admission.rejects import reject
from bytewax_fraud.partitioning import murmur2_many
from bytewax_fraud.records import DeadLetter, EventBatch

STAGE = "routing"
WRONG_PARTITION = "WrongPartition"

#: murmur2's multiplier; uint32 arrays wrap modulo 2**32, as murmur2 does.
_M = np.uint32(0x5BD1E995)

#: Batches up to this size look their users' homes up in `_HOMES`.
SMALL_BATCH = 64
#: Users' home partitions, by partition count; emptied before it would pass `_HOMES_MAX`
#: (so it holds at most that many, or one batch's users).
_HOMES: dict[int, dict[str, int]] = {}
_HOMES_MAX = 1 << 17


def partitions_of(user_ids: list[str], partition_count: int) -> npt.NDArray[np.int64]:
    """`partitioning.partition_for` of every id, computed over the whole list at once."""
    n = len(user_ids)
    if partition_count == 1 or n == 0:
        return np.zeros(n, np.int64)
    joined = "".join(user_ids)
    if joined.isascii():  # one encode for the batch; characters are bytes
        flat = np.frombuffer(joined.encode("ascii"), np.uint8)
        lengths = np.fromiter(map(len, user_ids), np.int64, n)
    else:
        encoded = [u.encode("utf-8") for u in user_ids]
        flat = np.frombuffer(b"".join(encoded), np.uint8)
        lengths = np.fromiter(map(len, encoded), np.int64, n)
    if (lengths == lengths[0]).all():  # the common case: fixed-width ids
        h = murmur2_many(flat.reshape(n, int(lengths[0])))
    else:
        h = _murmur2_ragged(flat, lengths)
    return (h.astype(np.int64) & 0x7FFFFFFF) % partition_count


def _murmur2_ragged(flat: npt.NDArray[np.uint8], lengths: npt.NDArray[np.int64]) -> np.ndarray:
    """Kafka's murmur2 of byte strings of different lengths, concatenated in `flat`, as int32."""
    n = len(lengths)
    width = int(lengths.max())
    starts = np.cumsum(lengths) - lengths
    # Rows padded with zeros to the longest; each row's own length decides what counts.
    padded = np.zeros((n, width + 3), np.uint8)
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(len(flat)) - np.repeat(starts, lengths)
    padded[row, col] = flat
    n4 = lengths // 4
    h = (np.uint32(0x9747B28C) ^ lengths.astype(np.uint32)).astype(np.uint32)
    words = np.ascontiguousarray(padded[:, : (width // 4) * 4]).view("<u4")
    for j in range(width // 4):
        k = words[:, j] * _M
        k ^= k >> np.uint32(24)
        k *= _M
        h = np.where(j < n4, (h * _M) ^ k, h)
    extra = lengths % 4
    tail = n4 * 4
    rows = np.arange(n)
    b0 = padded[rows, tail].astype(np.uint32)
    b1 = padded[rows, tail + 1].astype(np.uint32)
    b2 = padded[rows, tail + 2].astype(np.uint32)
    h = np.where(extra == 3, h ^ (b2 << np.uint32(16)), h)
    h = np.where(extra >= 2, h ^ (b1 << np.uint32(8)), h)
    h = np.where(extra >= 1, (h ^ b0) * _M, h)
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h.view(np.int32)


def homes_of(user_ids: list[str], partition_count: int) -> list[int]:
    """`partitions_of` as a list, from the table of known homes where it has them."""
    known = _HOMES.setdefault(partition_count, {})
    homes = list(map(known.get, user_ids))
    if None not in homes:
        return homes  # type: ignore[return-value]
    missing = [u for u, h in zip(user_ids, homes, strict=True) if h is None]
    found = dict(zip(missing, partitions_of(missing, partition_count).tolist(), strict=True))
    if len(known) + len(found) > _HOMES_MAX:
        known.clear()
    known.update(found)
    return [found[u] if h is None else h for u, h in zip(user_ids, homes, strict=True)]


def reject_misrouted(
    batch: EventBatch, partition_count: int
) -> tuple[EventBatch | None, list[DeadLetter]]:
    """The batch without events of users of other partitions, and their dead letters.

    Args:
        batch: Valid events, all read from `batch.partition`.
        partition_count: The number of state (= input) partitions.
    """
    if len(batch) <= SMALL_BATCH:
        homes = homes_of(batch.user_ids, partition_count)
        if homes.count(batch.partition) == len(homes):
            return batch, []
        home = np.asarray(homes, np.int64)
    else:
        home = partitions_of(batch.user_ids, partition_count)
    wrong = home != batch.partition
    if not wrong.any():
        return batch, []
    dead = [
        reject(
            batch,
            i,
            STAGE,
            WRONG_PARTITION,
            f"user {batch.user_ids[i]!r} belongs to partition {int(home[i])} (murmur2 of the"
            f" user_id, {partition_count} partitions) but arrived on partition"
            f" {batch.partition}: the producer must key each message by its user_id and use"
            " Kafka's default partitioner (librdkafka clients: partitioner=murmur2_random)",
        )
        for i in np.flatnonzero(wrong).tolist()
    ]
    keep = np.flatnonzero(~wrong)
    return (batch.take(keep) if len(keep) else None), dead
