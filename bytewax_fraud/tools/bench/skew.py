"""Key skew: events/s as one user takes a growing share of the events.

    python -m bytewax_fraud.tools.bench.skew --events 120000 --users 10000 \\
        --shares 0,0.1,0.3,0.6 --plot docs/skew.png

Each variant reads a Kafka backlog (produced first, then the 1-worker job runs to the
end of it), like the benchmark's `kafka-1w`. A share `s` moves a random `s` of the
generated events (seed-fixed) to one user, `hot-user`; the stream stays in event-time
order, so no event is rejected and every variant scores all of them. Ratios are to the
even backlog (share 0) of the same mode in the same run.

Modes: `sequence` serves the model as shipped (a user's run of events in a batch goes
through its sequence form in one call); `waves` serves a copy of the same file without
the file it declares as its sequence form beside it, so the scorer falls back to waves
(one model call per event of the busiest user). The embedded job with FRAUD_USERS=1
against 10,000 users (1 partition, no Kafka) is measured per mode too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bytewax_fraud.settings import DEFAULT_MODEL
from bytewax_fraud.tools.bench.broker import bench_broker
from bytewax_fraud.tools.bench.config import BenchConfig
from bytewax_fraud.tools.bench.embedded import run_dataflow
from bytewax_fraud.tools.bench.kafka import run_kafka
from bytewax_fraud.tools.bench.report import hardware
from bytewax_fraud.tools.produce import generated

HOT_USER = b"hot-user"
_USER_FIELD = b'"user_id":"'


@dataclass(frozen=True)
class SkewConfig:
    """What one skew run measures."""

    events: int = 120_000
    users: int = 10_000
    partitions: int = 4
    shares: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6)
    modes: tuple[str, ...] = ("sequence", "waves")
    embedded_events: int = 30_000
    #: User counts of the embedded runs (1 partition); the largest is the reference.
    embedded_users: tuple[int, ...] = (1, 10_000)
    model: Path = DEFAULT_MODEL
    seed: int = 0


def hot_messages(
    users: int, seed: int, events: int, share: float
) -> list[tuple[bytes | None, bytes]]:
    """The generator's stream with a random `share` of its events moved to `hot-user`."""
    hot = np.random.default_rng(seed + 1).random(events) < share
    out: list[tuple[bytes | None, bytes]] = []
    for (key, value), is_hot in zip(generated(users, seed, events), hot.tolist(), strict=True):
        if is_hot and key is not None:
            value = value.replace(_USER_FIELD + key + b'"', _USER_FIELD + HOT_USER + b'"', 1)
            key = HOT_USER
        out.append((key, value))
    return out


def model_for(mode: str, model: Path, workdir: Path) -> Path:
    """The model file a mode serves (`waves`: the same file alone, without its sequence form).

    The copy is byte for byte the model file (same sha256, same label in the predictions),
    but the file it names as its sequence form is not beside it: the scorer falls back to
    waves, as for any model that comes without one.
    """
    if mode == "sequence":
        return model
    alone = workdir / "waves"
    alone.mkdir(exist_ok=True)
    path = alone / model.name
    shutil.copyfile(model, path)
    return path


def measure(cfg: SkewConfig, workdir: Path, log: Any = print) -> dict[str, Any]:
    """Run every (mode, share) Kafka variant and the embedded user-count pair."""
    rows: list[dict[str, Any]] = []
    embedded: list[dict[str, Any]] = []
    models = {m: model_for(m, cfg.model, workdir) for m in cfg.modes}
    with bench_broker(workdir) as (broker, where):
        if broker is None:
            log(f"  kafka: skipped: {where}")
        else:
            for mode in cfg.modes:
                bcfg = BenchConfig(
                    users=cfg.users, partitions=cfg.partitions, model=models[mode], seed=cfg.seed
                )
                for share in cfg.shares:
                    msgs = hot_messages(cfg.users, cfg.seed, cfg.events, share)
                    name = f"kafka-{mode}-hot{share:g}"
                    r = run_kafka(bcfg, name, workdir, broker, events=cfg.events, produced=msgs)
                    log(f"  {name}: {r.events_per_s:,.0f} ev/s")
                    rows.append({"mode": mode, "share": share, "events_per_s": r.events_per_s})
    for mode in cfg.modes:
        for users in cfg.embedded_users if cfg.embedded_events else ():
            bcfg = BenchConfig(users=users, partitions=1, model=models[mode], seed=cfg.seed)
            name = f"embedded-{mode}-users{users}"
            r = run_dataflow(bcfg, name, workdir, events=cfg.embedded_events)
            log(f"  {name}: {r.events_per_s:,.0f} ev/s, p50 {r.p50_ms} ms")
            embedded.append(
                {"mode": mode, "users": users, "events_per_s": r.events_per_s, "p50_ms": r.p50_ms}
            )
    for row in rows:
        even = [x for x in rows if x["mode"] == row["mode"] and x["share"] == 0.0]
        row["x_even"] = round(row["events_per_s"] / even[0]["events_per_s"], 3) if even else None
    for row in embedded:
        most = max(cfg.embedded_users)
        many = [x for x in embedded if x["mode"] == row["mode"] and x["users"] == most]
        row["x_many_users"] = round(row["events_per_s"] / many[0]["events_per_s"], 3)
    return {
        "hardware": hardware(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()},
        "kafka": rows,
        "embedded": embedded,
    }


def format_report(report: dict[str, Any]) -> str:
    """The two tables: Kafka backlog by hot share, embedded by user count."""
    lines = ["| mode | share of events from one user | events/s | x even |", "|---|---|---|---|"]
    for r in report["kafka"]:
        lines.append(
            f"| {r['mode']} | {r['share']:.0%} | {r['events_per_s']:,.0f} | {r['x_even']:.2f}x |"
        )
    lines += ["", "| mode | users | events/s | p50 ms | x many users |", "|---|---|---|---|---|"]
    for r in report["embedded"]:
        lines.append(
            f"| {r['mode']} | {r['users']:,} | {r['events_per_s']:,.0f} | {r['p50_ms']}"
            f" | {r['x_many_users']:.2f}x |"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    """Events/s against the hot share, one line per mode; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode, color in (("sequence", "tab:blue"), ("waves", "tab:red")):
        pts = sorted((r["share"], r["events_per_s"]) for r in report["kafka"] if r["mode"] == mode)
        if pts:
            label = "sequence path" if mode == "sequence" else "waves (no sequence form)"
            ax.plot([100 * s for s, _ in pts], [v for _, v in pts], "o-", color=color, label=label)
    hw = report["hardware"]
    ax.set_xlabel("share of the events from one user (%)")
    ax.set_ylabel("events/s (Kafka backlog, 1 worker)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Hot key ({hw['nproc']} cores)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the skew benchmark, print the tables, write the JSON and the plot."""
    d = SkewConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=d.events, help="events per Kafka backlog")
    ap.add_argument("--users", type=int, default=d.users)
    ap.add_argument("--partitions", type=int, default=d.partitions)
    ap.add_argument("--shares", default="0,0.1,0.3,0.6", help="hot shares (0 is the baseline)")
    ap.add_argument("--modes", default="sequence,waves", help="sequence, waves or both")
    ap.add_argument(
        "--embedded-events", type=int, default=d.embedded_events, help="0: no embedded runs"
    )
    ap.add_argument("--embedded-users", default="1,10000", help="user counts of embedded runs")
    ap.add_argument("--model", type=Path, default=d.model)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--json", type=Path, help="write the report as JSON here")
    ap.add_argument("--plot", type=Path, help="draw events/s against the hot share here")
    ap.add_argument("--workdir", type=Path, help="where temporary state and outputs go")
    a = ap.parse_args(argv)
    shares = tuple(sorted({0.0, *(float(x) for x in a.shares.split(","))}))
    modes = tuple(m for m in a.modes.split(",") if m)
    if any(not 0 <= s <= 1 for s in shares) or not set(modes) <= {"sequence", "waves"}:
        ap.error("--shares must lie in [0, 1]; --modes is sequence, waves or both")
    cfg = SkewConfig(
        events=a.events,
        users=a.users,
        partitions=a.partitions,
        shares=shares,
        modes=modes,
        embedded_events=a.embedded_events,
        embedded_users=tuple(int(x) for x in a.embedded_users.split(",")),
        model=a.model.resolve(),
        seed=a.seed,
    )
    if a.workdir is not None:
        a.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fraud-skew-", dir=a.workdir) as tmp:
        report = measure(cfg, Path(tmp))
    print(format_report(report))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=2) + "\n")
    if a.plot and not plot(report, a.plot):
        print("note: matplotlib is not installed, no plot drawn (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
