"""User -> state partition -> worker.

Users map to partitions with murmur2, the hash Kafka's default partitioner
applies to a record key, so a topic keyed by user_id lines up 1:1 with the
state partitions. Partitions map to bytewax workers through routing keys that
are chosen so that bytewax's own key routing spreads them evenly.
"""

from __future__ import annotations

import functools
import struct

import numpy as np
import numpy.typing as npt

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as a signed int32."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length // 4
    for (k,) in struct.iter_unpack("<I", data[: n4 * 4]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = data[n4 * 4 :]
    extra = len(tail)
    if extra == 3:
        h ^= tail[2] << 16
    if extra >= 2:
        h ^= tail[1] << 8
    if extra >= 1:
        h ^= tail[0]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@functools.lru_cache(maxsize=1 << 20)
def partition_for(user_id: str, partition_count: int) -> int:
    """The state partition (and Kafka partition) of a user: Kafka's default for key=user_id."""
    return (murmur2(user_id.encode("utf-8")) & 0x7FFFFFFF) % partition_count


# --- routing partitions to workers -------------------------------------------------------
#
# Bytewax routes a stateful step's key to worker `siphash13(key) % worker_count` (Rust's
# DefaultHasher with zero keys over the str's bytes and a 0xFF terminator). With a handful
# of keys that split is uneven, so each partition gets a routing key whose hash is
# congruent to the partition index modulo 840 = lcm(1..8): for any worker count from 1 to
# 8 (and every divisor of 840) partition p lands on worker p % worker_count.

_ROUTE_MODULUS = 840
_U64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _U64


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 (Rust's `DefaultHasher`) of `data`."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd() -> None:
        nonlocal v0, v1, v2, v3
        v0 = (v0 + v1) & _U64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _U64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _U64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _U64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)

    length = len(data)
    n8 = length // 8
    for (m,) in struct.iter_unpack("<Q", data[: n8 * 8]):
        v3 ^= m
        rnd()
        v0 ^= m
    tail = data[n8 * 8 :] + bytes(7 - (length % 8))
    b = ((length & 0xFF) << 56) | int.from_bytes(tail[:7], "little")
    v3 ^= b
    rnd()
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(3):
        rnd()
    return v0 ^ v1 ^ v2 ^ v3


def bytewax_route_hash(key: str) -> int:
    """The hash bytewax routes a string key by (`impl Hash for str` appends 0xFF)."""
    return siphash13(key.encode("utf-8") + b"\xff")


@functools.lru_cache(maxsize=4096)
def routing_key(partition: int) -> str:
    """The stateful-step key for a partition, chosen to land on worker `p % workers`."""
    target = partition % _ROUTE_MODULUS
    salt = 0
    while True:
        key = f"p{partition}.{salt}"
        if bytewax_route_hash(key) % _ROUTE_MODULUS == target:
            return key
        salt += 1


def partition_of_routing_key(key: str) -> int:
    """Inverse of `routing_key`."""
    return int(key[1:].split(".", 1)[0])


def murmur2_many(data: npt.NDArray[np.uint8]) -> npt.NDArray[np.int32]:
    """Kafka's murmur2 of many equal-length byte strings at once (rows of `data`), as int32.

    Args:
        data: [n, L] uint8, one byte string per row.

    Returns:
        [n] int32, equal to `murmur2(bytes(row))` for every row.
    """
    arr = np.ascontiguousarray(data, dtype=np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"murmur2_many needs a 2-D [n, L] uint8 array, got shape {arr.shape}")
    n, length = arr.shape
    # uint32 arrays wrap modulo 2**32 on overflow, which is exactly murmur2's arithmetic.
    m = np.uint32(_M)
    h = np.full(n, (0x9747B28C ^ length) & _MASK, dtype=np.uint32)
    n4 = length // 4
    if n4:
        words = np.ascontiguousarray(arr[:, : n4 * 4]).view("<u4")
        for j in range(n4):
            k = words[:, j] * m
            k ^= k >> np.uint32(24)
            k *= m
            h *= m
            h ^= k
    tail = arr[:, n4 * 4 :].astype(np.uint32)
    extra = tail.shape[1]
    if extra == 3:
        h ^= tail[:, 2] << np.uint32(16)
    if extra >= 2:
        h ^= tail[:, 1] << np.uint32(8)
    if extra >= 1:
        h ^= tail[:, 0]
        h *= m
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h.view(np.int32)
