"""Deterministic synthetic card transactions: the default source and the training data.

Every user has a fixed profile (typical amount, spread, activity, favourite merchants,
home currency) that depends only on (seed, user index). Time advances in chunks of
`CHUNK_SECONDS` (longer for a partition of very few users, see `chunk_seconds`); each
chunk is drawn with numpy in one go from an RNG seeded by
(seed, partition_count, partition_index, chunk index), so the stream of a partition is
reproducible and any offset can be regenerated from the start.

Fraud patterns need history to be seen (card testing, account takeover, velocity), and
legitimate look-alikes (big purchases of big spenders, travel, short bursts) keep a
stateless amount threshold from being enough.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from bytewax_fraud.partitioning import murmur2_many

#: 2026-01-01T00:00:00Z, the first chunk's start.
START_TIMESTAMP = 1_767_225_600.0
#: Simulated seconds per chunk; every episode fits inside one chunk.
CHUNK_SECONDS = 6 * 3600.0
#: A partition with fewer users than this draws chunks long enough to hold about
#: `MIN_CHUNK_EVENTS` events: drawing a chunk costs ~0.3 ms whatever it holds, and one
#: user's few events a day per 6-hour chunk would bound the generator at ~1k events/s.
SMALL_POPULATION = 16
MIN_CHUNK_EVENTS = 256
N_MERCHANTS = 200_000
#: Upper bound on users: every user id then has the same length ("u" + 7 digits).
MAX_USERS = 10_000_000
CURRENCIES: tuple[str, ...] = ("USD", "EUR", "GBP", "CAD", "MXN", "JPY", "AUD", "CHF")
_HOME_CURRENCY_P = (0.70, 0.10, 0.07, 0.06, 0.03, 0.02, 0.01, 0.01)
PATTERNS: tuple[str, ...] = (
    "normal",
    "card_testing",
    "account_takeover",
    "velocity",
    "big_spender",
    "travel",
    "legit_burst",
)
FRAUD_PATTERNS = frozenset({1, 2, 3})
_N_FAVOURITES = 10
_DAY = 86_400.0

# Episodes per user per simulated day.
_RATE_CARD_TESTING = 0.0023
_RATE_TAKEOVER = 0.0026
_RATE_VELOCITY = 0.0020
_RATE_TRAVEL = 0.010
_RATE_BURST = 0.060
_RATE_BIG_PURCHASE = 0.40  # big spenders only
_FAVOURITE_SHARE = 0.85

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


def user_id(index: int) -> str:
    """The wire user id of a user index."""
    return f"u{index:07d}"


def merchant_id(index: int) -> str:
    """The wire merchant id of a merchant index."""
    return f"m{index:06d}"


@dataclass(frozen=True)
class EventChunk:
    """Equal-length columns of transactions, sorted by timestamp."""

    user_index: I64
    amount: F64
    timestamp: F64
    merchant_index: I64
    currency: npt.NDArray[np.uint8]  # index into CURRENCIES
    label: npt.NDArray[np.int8]
    pattern: npt.NDArray[np.int8]  # index into PATTERNS

    def __len__(self) -> int:
        return int(self.user_index.shape[0])

    def head(self, n: int) -> EventChunk:
        """The first `n` events."""
        return EventChunk(*(getattr(self, f.name)[:n] for f in fields(self)))

    @staticmethod
    def concat(chunks: list[EventChunk]) -> EventChunk:
        """The chunks one after the other."""
        return EventChunk(
            *(np.concatenate([getattr(c, f.name) for c in chunks]) for f in fields(EventChunk))
        )


@dataclass(frozen=True)
class UserProfiles:
    """Per-user behaviour, arrays indexed by user index."""

    median: F64  # typical amount
    sigma: F64  # log-normal spread of amounts
    rate: F64  # events per day
    n_favourites: I64
    favourites: I64  # [users, _N_FAVOURITES] merchant indices
    home_currency: npt.NDArray[np.uint8]
    big_spender: npt.NDArray[np.bool_]

    def take(self, idx: I64) -> UserProfiles:
        """The profiles of the users `idx`, in that order."""
        return UserProfiles(*(getattr(self, f.name)[idx] for f in fields(self)))


def user_profiles(users: int, seed: int) -> UserProfiles:
    """Profiles of users 0..users-1; user i's profile depends only on (seed, i)."""

    # One RNG stream per attribute (drawn in one call) keeps user i independent of `users`.
    def rng(k: int) -> np.random.Generator:
        return np.random.default_rng([seed, 0xC0FFEE, k])

    big = rng(0).random(users) < 0.05
    u = rng(1).random(users)
    median = np.where(
        big, np.exp(np.log(300.0) + u * np.log(5.0)), np.exp(np.log(8.0) + u * np.log(37.5))
    )
    sigma = 0.3 + 0.5 * rng(2).random(users)
    rate = np.clip(np.exp(np.log(2.5) + 0.9 * rng(3).standard_normal(users)), 0.5, 20.0)
    n_fav = 3 + np.floor(rng(4).random(users) * 8).astype(np.int64)
    favourites = rng(5).integers(0, N_MERCHANTS, (users, _N_FAVOURITES), dtype=np.int64)
    cdf = np.cumsum(_HOME_CURRENCY_P)
    home = np.minimum(np.searchsorted(cdf, rng(6).random(users) * cdf[-1]), len(CURRENCIES) - 1)
    return UserProfiles(
        median=median,
        sigma=sigma,
        rate=rate,
        n_favourites=n_fav,
        favourites=favourites,
        home_currency=home.astype(np.uint8),
        big_spender=big,
    )


def user_id_bytes(indices: I64) -> npt.NDArray[np.uint8]:
    """[n, 8] ASCII bytes of `user_id(i)` for every index (all ids have 7 digits)."""
    idx = np.asarray(indices, dtype=np.int64)
    out = np.empty((idx.shape[0], 8), dtype=np.uint8)
    out[:, 0] = ord("u")
    rest = idx.copy()
    for pos in range(7, 0, -1):
        out[:, pos] = ord("0") + rest % 10
        rest //= 10
    return out


@dataclass
class _Parts:
    """Events of one chunk being assembled, per pattern."""

    cols: list[tuple[I64, F64, F64, I64, npt.NDArray[np.uint8], int]]

    def add(self, u: I64, amt: F64, ts: F64, m: I64, cur: npt.NDArray[np.uint8], p: int) -> None:
        self.cols.append((u, amt, ts, m, cur, p))


class TransactionGenerator:
    """The transactions of one partition of a synthetic user population.

    Args:
        users: population size (user indices 0..users-1).
        seed: selects the population and its stream.
        partition_count: number of partitions users are split into (Kafka's partitioner).
        partition_index: which partition this generator produces.
    """

    def __init__(
        self, users: int, seed: int = 0, partition_count: int = 1, partition_index: int = 0
    ) -> None:
        if not isinstance(users, int) or not 1 <= users <= MAX_USERS:
            raise ValueError(f"users must be an int between 1 and {MAX_USERS}, got {users!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(partition_count, int) or partition_count < 1:
            raise ValueError(f"partition_count must be an int >= 1, got {partition_count!r}")
        if not isinstance(partition_index, int) or not 0 <= partition_index < partition_count:
            raise ValueError(
                f"partition_index must be in [0, {partition_count}), got {partition_index!r}"
            )
        self.users = users
        self.seed = seed
        self.partition_count = partition_count
        self.partition_index = partition_index

    @functools.cached_property
    def user_indices(self) -> I64:
        """Indices of the users whose `partition_for(user_id(i), partition_count)` is ours."""
        all_idx = np.arange(self.users, dtype=np.int64)
        if self.partition_count == 1:
            return all_idx
        h = murmur2_many(user_id_bytes(all_idx)).astype(np.int64) & 0x7FFFFFFF
        return all_idx[h % self.partition_count == self.partition_index]

    @functools.cached_property
    def _profiles(self) -> UserProfiles:
        return user_profiles(self.users, self.seed).take(self.user_indices)

    @functools.cached_property
    def chunk_seconds(self) -> float:
        """Simulated seconds per chunk: `CHUNK_SECONDS`, longer for fewer than 16 users."""
        n_users = int(self.user_indices.shape[0])
        if n_users == 0 or n_users >= SMALL_POPULATION:
            return CHUNK_SECONDS
        per_chunk = float(self._profiles.rate.sum()) * CHUNK_SECONDS / _DAY
        return CHUNK_SECONDS * max(1, math.ceil(MIN_CHUNK_EVENTS / per_chunk))

    def chunk(self, k: int) -> EventChunk:
        """Chunk `k`: events in [START + k * span, START + (k + 1) * span), span `chunk_seconds`."""
        rng = np.random.default_rng([self.seed, self.partition_count, self.partition_index, k])
        span = self.chunk_seconds
        t0 = START_TIMESTAMP + k * span
        prof = self._profiles
        n_users = int(self.user_indices.shape[0])
        days = span / _DAY
        parts = _Parts([])
        home = prof.home_currency

        def new_merchants(n: int) -> I64:
            return rng.integers(0, N_MERCHANTS, n, dtype=np.int64)

        def favourite(u: I64) -> I64:
            slot = np.floor(rng.random(u.shape[0]) * prof.n_favourites[u]).astype(np.int64)
            return prof.favourites[u, slot]

        def usual_amount(u: I64, scale: F64 | float = 1.0) -> F64:
            z = rng.standard_normal(u.shape[0])
            return prof.median[u] * scale * np.exp(prof.sigma[u] * z)

        # Normal activity: Poisson counts, uniform times, mostly favourite merchants.
        counts = rng.poisson(prof.rate * days)
        u = np.repeat(np.arange(n_users, dtype=np.int64), counts)
        ts = t0 + rng.random(u.shape[0]) * span
        fav = rng.random(u.shape[0]) < _FAVOURITE_SHARE
        m = np.where(fav, favourite(u), new_merchants(u.shape[0]))
        parts.add(u, usual_amount(u), ts, m, home[u], 0)

        def episodes(
            rate: float,
            lo: int,
            hi: int,
            gap_lo: float,
            gap_hi: float,
            among: I64 | None = None,
            last_gap: tuple[float, float] | None = None,
        ) -> tuple[I64, I64, I64, F64, npt.NDArray[np.bool_]]:
            """(user, episode, position, timestamp, is-last) of each event of new episodes."""
            pool_n = n_users if among is None else int(among.shape[0])
            n_ep = int(rng.poisson(rate * days * pool_n)) if pool_n else 0
            ep_user = rng.integers(0, max(pool_n, 1), n_ep, dtype=np.int64)
            if among is not None:
                ep_user = among[ep_user]
            lengths = rng.integers(lo, hi + 1, n_ep, dtype=np.int64)
            ep = np.repeat(np.arange(n_ep, dtype=np.int64), lengths)
            first = np.cumsum(lengths) - lengths
            pos = np.arange(ep.shape[0], dtype=np.int64) - first[ep]
            last = np.repeat(lengths - 1, lengths) == pos
            gaps = np.where(pos == 0, 0.0, rng.uniform(gap_lo, gap_hi, ep.shape[0]))
            if last_gap is not None:
                gaps = np.where(last & (pos > 0), rng.uniform(*last_gap, ep.shape[0]), gaps)
            c = np.cumsum(gaps)
            within = c - c[first[ep]] if ep.shape[0] else c
            duration = np.zeros(n_ep)
            np.maximum.at(duration, ep, within)
            start = t0 + rng.random(n_ep) * (span - duration - 1.0)
            return ep_user[ep], ep, pos, start[ep] + within, last

        # Card testing: tiny amounts at odd merchants seconds to minutes apart, then a large one.
        u, _, _, ts, last = episodes(_RATE_CARD_TESTING, 4, 9, 5.0, 120.0, None, (60.0, 600.0))
        tiny = np.round(rng.uniform(0.10, 2.0, u.shape[0]), 2)
        big = np.maximum(200.0, prof.median[u] * rng.uniform(3.0, 10.0, u.shape[0]))
        parts.add(u, np.where(last, big, tiny), ts, new_merchants(u.shape[0]), home[u], 1)

        # Account takeover: a few very large amounts at new merchants.
        u, _, _, ts, _ = episodes(_RATE_TAKEOVER, 1, 3, 120.0, 3600.0)
        amt = prof.median[u] * rng.uniform(5.0, 30.0, u.shape[0])
        parts.add(u, amt, ts, new_merchants(u.shape[0]), home[u], 2)

        # Velocity: many ordinary-looking amounts seconds apart at new merchants.
        u, _, _, ts, _ = episodes(_RATE_VELOCITY, 6, 15, 2.0, 30.0)
        parts.add(u, usual_amount(u), ts, new_merchants(u.shape[0]), home[u], 3)

        # Big spenders: occasional very large purchases, half of them at favourite merchants.
        spenders = np.flatnonzero(prof.big_spender).astype(np.int64)
        u, _, _, ts, _ = episodes(_RATE_BIG_PURCHASE, 1, 1, 0.0, 0.0, among=spenders)
        amt = prof.median[u] * rng.uniform(4.0, 20.0, u.shape[0])
        m = np.where(rng.random(u.shape[0]) < 0.5, favourite(u), new_merchants(u.shape[0]))
        parts.add(u, amt, ts, m, home[u], 4)

        # Travel: new merchants abroad, somewhat higher amounts, spread over hours.
        u, ep, _, ts, _ = episodes(_RATE_TRAVEL, 3, 8, 600.0, 2400.0)
        shift = rng.integers(1, len(CURRENCIES), max(int(ep.max(initial=-1)) + 1, 0))
        cur = ((home[u].astype(np.int64) + shift[ep]) % len(CURRENCIES)).astype(np.uint8)
        amt = usual_amount(u, rng.uniform(1.5, 3.0, u.shape[0]))
        parts.add(u, amt, ts, new_merchants(u.shape[0]), cur, 5)

        # Legit bursts: a few purchases minutes apart at one favourite merchant.
        u, ep, _, ts, _ = episodes(_RATE_BURST, 2, 4, 60.0, 600.0)
        shop = favourite(u)
        if ep.shape[0]:
            shop = shop[np.r_[0, np.flatnonzero(ep[1:] != ep[:-1]) + 1]][ep]
        parts.add(u, usual_amount(u), ts, shop, home[u], 6)

        return _assemble(parts, self.user_indices, t0, span)

    def chunks(self) -> Iterator[EventChunk]:
        """All chunks, in event-time order (infinite)."""
        k = 0
        while True:
            yield self.chunk(k)
            k += 1

    def columns(self, n_events: int) -> EventChunk:
        """The first `n_events` events of the partition as columns."""
        if n_events < 0:
            raise ValueError(f"n_events must be >= 0, got {n_events}")
        if n_events and not self.user_indices.shape[0]:
            raise ValueError("this partition has no users; use more users or fewer partitions")
        got: list[EventChunk] = []
        total = 0
        for c in self.chunks():
            if total >= n_events:
                break
            got.append(c)
            total += len(c)
        return EventChunk.concat(got).head(n_events) if got else self.chunk(0).head(0)

    def events(self, start: int = 0) -> Iterator[bytes]:
        """JSON transactions at partition offsets start, start+1, ... (infinite).

        A partition without users (more partitions than users) yields nothing.
        """
        if start < 0:
            raise ValueError(f"start must be >= 0, got {start}")
        if not self.user_indices.shape[0]:
            return  # a partition without users has no events (rather than looping forever)
        prefix = f"tx-{self.seed}-{self.partition_count}-{self.partition_index}-"
        offset = 0
        for c in self.chunks():
            n = len(c)
            # Encode in slices, so a consumer never waits for a whole chunk's JSON at once.
            for lo in range(max(0, start - offset), n, _ENCODE_SLICE):
                yield from _encode(c, lo, min(lo + _ENCODE_SLICE, n), offset + lo, prefix)
            offset += n


@functools.cache
def _json_pieces() -> tuple[list[str], list[str], list[str]]:
    """Pre-formatted JSON fragments: merchant, currency, label + pattern (looked up per event)."""
    merchants = [f',"merchant":"{merchant_id(i)}' for i in range(N_MERCHANTS)]
    currencies = [f',"currency":"{c}","timestamp":' for c in CURRENCIES]
    tails = [
        f'","label":{int(p in FRAUD_PATTERNS)},"pattern":"{name}"}}'
        for p, name in enumerate(PATTERNS)
    ]
    return merchants, currencies, tails


_ENCODE_SLICE = 256


def _encode(c: EventChunk, lo: int, hi: int, first_offset: int, prefix: str) -> list[bytes]:
    """The events c[lo:hi] as compact JSON objects, one bytes each."""
    merchants, currencies, tails = _json_pieces()
    head = '{"transaction_id":"' + prefix
    rows = zip(
        range(first_offset, first_offset + hi - lo),
        c.user_index[lo:hi].tolist(),
        c.amount[lo:hi].tolist(),
        c.currency[lo:hi].tolist(),
        c.timestamp[lo:hi].tolist(),
        c.merchant_index[lo:hi].tolist(),
        c.pattern[lo:hi].tolist(),
        strict=True,
    )
    # One f-string per event and a single encode/split: the per-event cost is ~2 us.
    text = "\n".join(
        [
            f'{head}{o}","user_id":"u{u:07d}","amount":{a!r}{currencies[k]}{t!r}'
            f"{merchants[m]}{tails[p]}"
            for o, u, a, k, t, m, p in rows
        ]
    )
    return text.encode("utf-8").split(b"\n") if text else []


def _assemble(parts: _Parts, user_indices: I64, t0: float, span: float) -> EventChunk:
    """Concatenate the pattern parts, round, and sort by timestamp (stable)."""
    u = np.concatenate([p[0] for p in parts.cols])
    amt = np.maximum(np.round(np.concatenate([p[1] for p in parts.cols]), 2), 0.01)
    # Millisecond resolution; flooring keeps every event before the chunk's end.
    ts = np.floor(np.concatenate([p[2] for p in parts.cols]) * 1000.0) / 1000.0
    ts = np.clip(ts, t0, t0 + span - 0.001)
    m = np.concatenate([p[3] for p in parts.cols])
    cur = np.concatenate([p[4] for p in parts.cols]).astype(np.uint8)
    pat = np.concatenate([np.full(p[0].shape[0], p[5], dtype=np.int8) for p in parts.cols])
    label = np.isin(pat, list(FRAUD_PATTERNS)).astype(np.int8)
    order = np.argsort(ts, kind="stable")
    return EventChunk(
        user_index=user_indices[u[order]],
        amount=amt[order],
        timestamp=ts[order],
        merchant_index=m[order],
        currency=cur[order],
        label=label[order],
        pattern=pat[order],
    )
