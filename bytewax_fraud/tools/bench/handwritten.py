"""The benchmark's hand-written baselines: the Python limit without durability.

What a team would write in a plain loop instead of the dataflow: orjson to
parse, a dict from user id to a row of in-memory numpy arrays for the state,
the model called through ONNX Runtime, and the output lines built with orjson
and thrown away. No validation, no durability, no recovery. Two modes:

- ``per-event``: one batch-1 model call per event;
- ``batched``: cross-user batches of at most `--batch-max` events, a user at
  most once per batch (a user's later events wait for the next batch, so each
  user's events are scored in order), one model call per batch.

The input is the same bytes the embedded dataflow reads: the generator's
messages of every partition (`GeneratorSource`'s streams, the same quota per
partition), interleaved in source-sized slices. They are **generated before the
clock starts**: the figures do not include generating or encoding them (the
dataflow's do). The features come from `bytewax_fraud.features` and the model
is loaded with `ModelLoader`, so the arithmetic is the dataflow's.

Run by the benchmark as a subprocess (so that its peak RSS can be read):

    python -m bytewax_fraud.tools.bench.handwritten --mode batched --events N --out R.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.connectors.generator_source import partition_quota
from bytewax_fraud.features import compute_features, merchant_code, push
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.settings import DEFAULT_MODEL

WINDOW = 10  # the Settings default, as the dataflow runs in the benchmark
SLICE = 1024  # events a generator partition hands over at once (the source's batch_max)


def pregenerate(users: int, seed: int, partitions: int, events: int) -> list[bytes]:
    """The dataflow's input bytes: each partition's stream, interleaved in `SLICE`-sized slices."""
    streams: list[Iterator[bytes]] = []
    for p in range(partitions):
        gen = TransactionGenerator(
            users=users, seed=seed, partition_count=partitions, partition_index=p
        )
        quota = partition_quota(events, partitions, p) or 0
        streams.append(itertools.islice(gen.events(), quota))
    out: list[bytes] = []
    while streams:
        for s in list(streams):
            got = list(itertools.islice(s, SLICE))
            if got:
                out += got
            else:
                streams.remove(s)
    return out


class _State:
    """Every user's state as rows of in-memory numpy arrays, found by a dict."""

    def __init__(self, users: int, hidden: int) -> None:
        self.rows: dict[str, int] = {}
        n = max(users, 1)
        self.amounts = np.zeros((n, WINDOW), np.float32)
        self.merchants = np.zeros((n, WINDOW), np.uint32)
        self.count = np.zeros(n, np.int64)
        self.last_ts = np.zeros(n, np.float64)
        self.hidden = np.zeros((n, hidden), np.float32)

    def row(self, user: str) -> int:
        r = self.rows.get(user)
        if r is None:
            r = self.rows[user] = len(self.rows)
            if r >= len(self.count):  # more users than announced: grow
                for name in ("amounts", "merchants", "count", "last_ts", "hidden"):
                    a = getattr(self, name)
                    setattr(self, name, np.concatenate([a, np.zeros_like(a)]))
        return r

    def score(
        self,
        model: LoadedModel,
        rows: list[int],
        amount: np.ndarray,
        ts: np.ndarray,
        merchant: np.ndarray,
    ) -> np.ndarray:
        """One model call for these rows (distinct users); updates their state."""
        r = np.asarray(rows, np.intp)
        feats = compute_features(
            self.amounts[r], self.merchants[r], self.count[r], self.last_ts[r], amount, ts, merchant
        )
        prob, h = model.predict(feats, self.hidden[r] if model.hidden_size else None)
        if h is not None:
            self.hidden[r] = h
        self.amounts[r], self.merchants[r], self.count[r] = push(
            self.amounts[r], self.merchants[r], self.count[r], amount, merchant
        )
        self.last_ts[r] = ts
        return prob


def _line(tx: dict, prob: float, label: str, offset: int, latency_ms: float) -> bytes:
    return orjson.dumps(
        {
            "transaction_id": tx["transaction_id"],
            "user_id": tx["user_id"],
            "probability": prob,
            "model": label,
            "event_timestamp": tx["timestamp"],
            "offset": offset,
            "latency_ms": latency_ms,
            "label": tx.get("label"),
        }
    )


def run_per_event(values: list[bytes], model: LoadedModel, users: int) -> tuple[float, np.ndarray]:
    """One batch-1 model call per event. Returns (seconds, latency ms of each event)."""
    st = _State(users, model.hidden_size)
    lat = np.empty(len(values), np.float64)
    label = model.label
    loads, now = orjson.loads, time.perf_counter
    t0 = now()
    for i, value in enumerate(values):
        t = now()
        tx = loads(value)
        code = merchant_code(tx["merchant"])  # no cache: cheaper than a lookup in a big dict
        prob = st.score(
            model,
            [st.row(tx["user_id"])],
            np.asarray([tx["amount"]], np.float64),
            np.asarray([tx["timestamp"]], np.float64),
            np.asarray([code], np.uint32),
        )
        ms = (now() - t) * 1e3
        _line(tx, float(prob[0]), label, i, ms)
        lat[i] = ms
    return now() - t0, lat


def _next_batch(
    carry: list[tuple[int, dict]],
    values: list[bytes],
    pos: int,
    batch_max: int,
    loads: Callable[[bytes], Any],
) -> tuple[list[tuple[int, dict]], list[tuple[int, dict]], int]:
    """The next batch (a user at most once), the events that must wait, the next position.

    The waiting events of `carry` are offered first, then new ones are parsed until
    the batch is full. An event whose user is already in the batch waits, and so
    does every later event of that user: each user's events stay in order.
    """
    taken: set[str] = set()
    batch: list[tuple[int, dict]] = []
    waiting: list[tuple[int, dict]] = []
    for item in carry:
        u = item[1]["user_id"]
        if u in taken or len(batch) >= batch_max:
            waiting.append(item)
        else:
            batch.append(item)
        taken.add(u)
    while len(batch) < batch_max and pos < len(values):
        item = (pos, loads(values[pos]))
        pos += 1
        u = item[1]["user_id"]
        if u in taken:
            waiting.append(item)
        else:
            batch.append(item)
            taken.add(u)
    return batch, waiting, pos


def run_batched(
    values: list[bytes], model: LoadedModel, users: int, batch_max: int
) -> tuple[float, np.ndarray, int]:
    """Cross-user batches, a user at most once per batch, per-user order kept.

    Returns (seconds, latency ms of each event from the start of its batch's
    parse to its line, batches run).
    """
    st = _State(users, model.hidden_size)
    lat: list[float] = []
    label = model.label
    loads, now = orjson.loads, time.perf_counter
    carry: list[tuple[int, dict]] = []  # parsed events that wait for a later batch, in order
    pos, n, batches = 0, len(values), 0
    t0 = now()
    while pos < n or carry:
        t = now()
        batch, carry, pos = _next_batch(carry, values, pos, batch_max, loads)
        rows, amount, ts, merch = [], [], [], []
        for _, tx in batch:
            rows.append(st.row(tx["user_id"]))
            amount.append(tx["amount"])
            ts.append(tx["timestamp"])
            merch.append(merchant_code(tx["merchant"]))
        prob = st.score(
            model,
            rows,
            np.asarray(amount, np.float64),
            np.asarray(ts, np.float64),
            np.asarray(merch, np.uint32),
        ).tolist()
        batches += 1
        ms = (now() - t) * 1e3
        for (off, tx), p in zip(batch, prob, strict=True):
            _line(tx, p, label, off, ms)
        lat += [ms] * len(batch)
    return now() - t0, np.asarray(lat, np.float64), batches


def main(argv: list[str] | None = None) -> int:
    """Pre-generate the input, run one mode, write a JSON result."""
    ap = argparse.ArgumentParser(prog="python -m bytewax_fraud.tools.bench.handwritten")
    ap.add_argument("--mode", choices=["per-event", "batched"], required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-max", type=int, default=512)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument(
        "--input",
        type=Path,
        help="read the events from this JSON Lines file, inside the clock, instead of generating",
    )
    a = ap.parse_args(argv)
    model = ModelLoader(a.device, warmup_batch=a.batch_max).load(a.model)
    g0 = time.perf_counter()
    if a.input is not None:  # the same bytes as the job's FRAUD_INPUT, read in the timed run
        values = a.input.read_bytes().splitlines()
    else:
        values = pregenerate(a.users, a.seed, a.partitions, a.events)
    gen_s = time.perf_counter() - g0
    batches = len(values)
    if a.mode == "per-event":
        secs, lat = run_per_event(values, model, a.users)
    else:
        secs, lat, batches = run_batched(values, model, a.users, a.batch_max)
    if a.input is not None:
        secs += gen_s
    result = {
        "events": len(values),
        "seconds": secs,
        "events_per_s": len(values) / secs,
        "latencies_ms": lat.tolist(),
        "batches": batches,
        "pregenerate_s": round(gen_s, 3),
    }
    a.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
