"""The external-call baseline of the benchmark: the model behind a local HTTP endpoint.

This is the classic stateless REST design the embedded dataflow is compared
with. The server holds no user state: the client keeps every user's window and
hidden state in a dict, computes the features, ships features and hidden state
with each call (JSON), and stores the hidden state that comes back.

Both ends run as subprocesses of the benchmark so that each one's peak RSS can
be read from `os.wait4`:

    python -m bytewax_fraud.tools.bench.external_http serve --model M --device cpu
    python -m bytewax_fraud.tools.bench.external_http client --port P --hidden H \\
        --events N --out R.json
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import socket
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from bytewax_fraud.connectors.generator import TransactionGenerator
from bytewax_fraud.features import compute_features, merchant_code, push
from bytewax_fraud.inference.loader import ModelLoader
from bytewax_fraud.inference.runtime import LoadedModel
from bytewax_fraud.records import Transaction

WINDOW = 10  # the Settings default, as the dataflow runs in the benchmark


def _handler(model: LoadedModel) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one loaded model."""
    hidden_size = model.hidden_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive
        disable_nagle_algorithm = True

        def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            req = json.loads(body)
            feats = np.asarray([req["features"]], np.float32)
            hidden = np.asarray([req["hidden"]], np.float32) if hidden_size else None
            prob, new_hidden = model.predict(feats, hidden)
            resp: dict[str, object] = {"probability": float(prob[0])}
            if new_hidden is not None:
                resp["hidden"] = new_hidden[0].tolist()
            out = json.dumps(resp).encode()
            # One write for head and body: two small writes meet Nagle + delayed ACK (40 ms).
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(out)}\r\n\r\n"
            ).encode()
            self.wfile.write(head + out)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # one line per request would be the bottleneck

    return Handler


def serve(model_path: Path, device: str) -> None:
    """Serve the model on a free port of 127.0.0.1 until killed.

    Prints one line `PORT <port> HIDDEN <hidden size>` on stdout once it listens.
    """
    model = ModelLoader(device, warmup_batch=1).load(model_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(model))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]} HIDDEN {model.hidden_size}", flush=True)
    server.serve_forever()


def workload(users: int, partitions: int, seed: int, n: int) -> list[bytes]:
    """The first `n` events of the dataflow's generated workload, partitions interleaved.

    Each partition contributes its first `n / partitions` events (as the
    dataflow's source does), so every user sees its events in order.
    """
    streams: list[Iterator[bytes]] = [
        TransactionGenerator(users, seed, partitions, p).events(0) for p in range(partitions)
    ]
    quotas = [n // partitions + (1 if p < n % partitions else 0) for p in range(partitions)]
    per_part = [list(itertools.islice(s, q)) for s, q in zip(streams, quotas, strict=True)]
    out: list[bytes] = []
    for row in itertools.zip_longest(*per_part):
        out.extend(x for x in row if x is not None)
    return out


class _UserState:
    """What the client keeps for one user between calls."""

    __slots__ = ("amounts", "merchants", "count", "last_ts", "hidden")

    def __init__(self, hidden_size: int) -> None:
        self.amounts = np.zeros((1, WINDOW), np.float32)
        self.merchants = np.zeros((1, WINDOW), np.uint32)
        self.count = np.zeros(1, np.int64)
        self.last_ts = np.zeros(1, np.float64)
        self.hidden: list[float] = [0.0] * hidden_size


def run_client(
    port: int, hidden_size: int, events: list[bytes], rate: float, warmup_s: float = 0.0
) -> dict[str, object]:
    """Call the endpoint once per event, in order; return rate and latencies.

    With `rate` > 0 event i is due at t0 + i / rate, and its latency runs from
    that due time (so a client that falls behind sees its queueing delay, as the
    dataflow's would); with `rate` = 0 the calls go back to back and the latency
    of each runs from the moment its event is taken. Latencies of calls that end
    in the first `warmup_s` seconds (at most half of them) are not returned.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    headers = {"Content-Type": "application/json"}
    states: dict[str, _UserState] = {}
    lat = np.empty(len(events), np.float64)
    done = np.empty(len(events), np.float64)
    t0 = time.perf_counter()
    for i, raw in enumerate(events):
        if rate > 0:
            due = t0 + i / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        else:
            due = time.perf_counter()
        tx = Transaction.model_validate_json(raw)
        st = states.get(tx.user_id)
        if st is None:
            st = states[tx.user_id] = _UserState(hidden_size)
        m = merchant_code(tx.merchant)
        feats = compute_features(
            st.amounts, st.merchants, st.count, st.last_ts, [tx.amount], [tx.timestamp], [m]
        )
        req: dict[str, object] = {"features": feats[0].tolist()}
        if hidden_size:
            req["hidden"] = st.hidden
        conn.request("POST", "/predict", json.dumps(req).encode(), headers)
        resp = conn.getresponse()
        body = json.loads(resp.read())
        if resp.status != 200:
            raise RuntimeError(f"the model server answered {resp.status}: {body}")
        if hidden_size:
            st.hidden = body["hidden"]
        st.amounts, st.merchants, st.count = push(
            st.amounts, st.merchants, st.count, [tx.amount], [m]
        )
        st.last_ts[0] = tx.timestamp
        done[i] = time.perf_counter()
        lat[i] = done[i] - due
    elapsed = time.perf_counter() - t0
    conn.close()
    skip = min(int(np.searchsorted(done - t0, warmup_s)), len(events) // 2)
    return {
        "events": len(events),
        "elapsed_s": elapsed,
        "events_per_s": len(events) / elapsed,
        "latencies_ms": (lat[skip:] * 1e3).round(3).tolist(),
        "warmup_skipped": skip,
        "users": len(states),
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the server and client subprocesses."""
    ap = argparse.ArgumentParser(prog="python -m bytewax_fraud.tools.bench.external_http")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the model on a free local port")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--device", default="cpu")
    c = sub.add_parser("client", help="call the endpoint once per generated event")
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--hidden", type=int, required=True, help="hidden size (0: stateless)")
    c.add_argument("--events", type=int, required=True)
    c.add_argument("--users", type=int, required=True)
    c.add_argument("--partitions", type=int, required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--rate", type=float, default=0.0, help="offered events/s (0: back to back)")
    c.add_argument("--warmup-s", type=float, default=0.0, help="latencies not counted")
    c.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "serve":
        serve(a.model, a.device)
        return 0
    events = workload(a.users, a.partitions, a.seed, a.events)
    result = run_client(a.port, a.hidden, events, a.rate, a.warmup_s)
    a.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
