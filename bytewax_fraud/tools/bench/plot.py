"""The latency-vs-throughput picture of a report (matplotlib, `pip install -e '.[bench]'`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot(report: dict[str, Any], path: Path) -> bool:
    """Draw p50/p99 latency against achieved throughput; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sw = report["load_sweep"]
    fig, ax = plt.subplots(figsize=(8, 5))
    styles = {
        "embedded-1w": "tab:blue",
        "kafka-1w": "tab:green",
        "broker-only": "tab:gray",
        "external": "tab:red",
        "external-own": "tab:orange",
    }
    labels = {
        "embedded-1w": "embedded (1 worker)",
        "kafka-1w": "Kafka end to end (1 worker)",
        "broker-only": "broker alone (produce -> consume)",
        "external": "external HTTP",
        "external-own": "external HTTP, own max",
    }
    for system, color in styles.items():
        pts = [r for r in sw["points"] if r["name"].split("@")[0] == system]
        if not pts:
            continue
        x = [r["events_per_s"] for r in pts]
        label = labels[system]
        ax.plot(x, [r["p50_ms"] for r in pts], "o-", color=color, label=f"{label} p50")
        ax.plot(x, [r["p99_ms"] for r in pts], "s--", color=color, label=f"{label} p99")
        for r in pts:
            if math.isclose(r["extra"]["load"], 0.5):
                ax.annotate(
                    f"p99 @50%: {r['p99_ms']:.1f} ms",
                    (r["events_per_s"], r["p99_ms"]),
                    textcoords="offset points",
                    xytext=(8, 8),
                    color=color,
                )
                ax.plot([r["events_per_s"]], [r["p99_ms"]], "*", ms=14, color=color)
    reader = report["kafka"].get("outside_reader") or {}
    reader_styles = {
        "broker": ("black", "broker alone"),
        "alo": ("tab:green", "Kafka at-least-once"),
        "alo-r": ("tab:olive", "Kafka at-least-once, 5 s snapshots"),
        "eos": ("tab:purple", "Kafka exactly-once"),
        "broker-1p": ("gray", "broker alone, 1 partition"),
        "alo-1p": ("tab:cyan", "Kafka at-least-once, 1 partition"),
        "eos-1p": ("tab:pink", "Kafka exactly-once, 1 partition"),
    }
    for variant, (color, label) in reader_styles.items():
        pts = [r for r in reader.get("points", []) if r["variant"] == variant]
        if pts:
            x = [r["offered_per_s"] for r in pts]
            ax.plot(x, [r["p99_ms"] for r in pts], "^-.", color=color, label=f"{label}, reader p99")
    ax.axhline(sw["target_p99_ms"], color="gray", ls=":", label="p99 target (20 ms)")
    ax.margins(y=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved throughput (events/s)")
    ax.set_ylabel("latency (ms)")
    hw = report["hardware"]
    ax.set_title(f"Latency vs throughput ({hw['nproc']} cores, {hw['cpu_model']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
