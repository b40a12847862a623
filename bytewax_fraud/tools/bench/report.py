"""The report: the machine it was measured on, the ratios to the targets, the tables as text."""

from __future__ import annotations

import math
import os
import platform
from importlib import metadata
from typing import Any

from bytewax_fraud.tools.bench.config import REFERENCE
from bytewax_fraud.tools.bench.file import format_file
from bytewax_fraud.tools.bench.reader import format_reader


def hardware() -> dict[str, Any]:
    """The machine the figures were taken on."""
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break

    def version(*names: str) -> str:
        for n in names:
            try:
                return metadata.version(n)
            except metadata.PackageNotFoundError:
                continue
        return "?"

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "memory": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "bytewax": version("bytewax"),
        "onnxruntime": version("onnxruntime-gpu", "onnxruntime"),
        "rocksdict": version("rocksdict"),
    }


def ratio_targets(rates: dict[str, float], workers: tuple[int, ...]) -> list[dict[str, Any]]:
    """The issue's throughput targets, each with its measured ratio and whether it is met."""
    ref = rates.get(REFERENCE)
    out: list[dict[str, Any]] = []

    def target(what: str, num: str, den: str | None, at_least: float) -> None:
        base = ref if den is None else rates.get(den)
        if num in rates and base:
            ratio = round(rates[num] / base, 3)
            out.append(
                {"target": what, "ratio": ratio, "at_least": at_least, "met": ratio >= at_least}
            )

    target(f"embedded-1w / {REFERENCE}", "embedded-1w", None, 1.0)
    target(f"kafka-1w / {REFERENCE}", "kafka-1w", None, 0.8)
    for w in workers:
        if w > 1:
            target(f"embedded-{w}p / embedded-1w", f"embedded-{w}p", "embedded-1w", 0.9 * w)
            target(f"kafka-{w}p / kafka-1w (reported)", f"kafka-{w}p", "kafka-1w", 0.0)
    return out


def _fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as readable tables."""
    hw, st = report["hardware"], report["settings"]
    out = [
        f"hardware: {hw['nproc']} cores usable ({hw['cpu_count']} online), {hw['cpu_model']},"
        f" {hw['memory']}; {hw['platform']}",
        f"software: python {hw['python']}, bytewax {hw['bytewax']}, onnxruntime"
        f" {hw['onnxruntime']}, rocksdict {hw['rocksdict']}",
        "settings: " + ", ".join(f"{k}={v}" for k, v in st.items()),
        "",
        f"{'variant':<22}{'events':>9}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99.9 ms':>10}{'RSS MB':>9}{'x hw-batch':>11}{'x extern':>10}",
    ]
    for r in report["variants"].values():
        e = r["extra"]
        out.append(
            f"{r['name']:<22}{r['events']:>9,}{r['events_per_s']:>11,.0f}{_fmt(r['p50_ms']):>9}"
            f"{_fmt(r['p99_ms']):>9}{_fmt(r['p999_ms']):>10}{r['peak_rss_mb']:>9,.0f}"
            f"{_fmt(e.get('x_handwritten', math.nan)):>11}"
            f"{_fmt(e.get('x_external', math.nan)):>10}"
        )
    out += format_file(report.get("file_input"))
    k = report.get("kafka", {})
    if k.get("ran"):
        out.append(
            f"kafka-1w: broker {k['broker']}; produced {report['variants']['kafka-1w']['events']:,}"
            f" events in {k['produce_s']:.2f} s ({k['produce_msg_per_s']:,.0f} msg/s); events/s"
            f" from the {k['rate_from']} (job summary, start to end:"
            f" {k['summary_events_per_s']:,.0f} ev/s); dead letters {k['dead_letters'] or 0}"
        )
        out += format_kafka_cpu(report["variants"])
    elif k:
        out.append(f"kafka-1w: skipped ({k['reason']})")
    for t in report.get("ratios", {}).get("targets", []):
        verdict = ("met" if t["met"] else "MISSED") if t["at_least"] else "reported"
        goal = f" (target >= {t['at_least']:.1f}: {verdict})" if t["at_least"] else ""
        out.append(f"ratio {t['target']}: {t['ratio']:.2f}{goal}")
    sw = report["load_sweep"]
    out += [
        "",
        f"latency vs throughput (offered load as a share of {sw['max_events_per_s']:,.0f} ev/s,"
        " the 1-worker maximum; external-own: of the external baseline's maximum; kafka-1w:"
        " latency from the input message's CreateTime to the prediction's; broker-only: the"
        " same messages produced and consumed with no job, the broker's floor)",
        f"{'system':<16}{'load':>6}{'offered/s':>11}{'achieved/s':>12}{'p50 ms':>9}{'p99 ms':>10}"
        f"{'p99.9 ms':>10}",
    ]
    for r in sw["points"]:
        mark = "  <- 50%" if math.isclose(r["extra"]["load"], 0.5) else ""
        out.append(
            f"{r['name'].split('@')[0]:<16}{r['extra']['load']:>6.0%}{r['offered_per_s']:>11,.0f}"
            f"{r['events_per_s']:>12,.0f}{_fmt(r['p50_ms']):>9}{_fmt(r['p99_ms']):>10}"
            f"{_fmt(r['p999_ms']):>10}{mark}"
        )
    for system, p99 in sw["p99_ms_at_50pct"].items():
        verdict = "met" if p99 < sw["target_p99_ms"] else "MISSED"
        out.append(
            f"p99 at 50% of max, {system}: {_fmt(p99)} ms"
            f" (target < {sw['target_p99_ms']:.0f} ms: {verdict})"
        )
    reader = report["kafka"].get("outside_reader")
    if reader:
        out += ["", *format_reader(reader)]
    return "\n".join(out)


def format_kafka_cpu(variants: dict[str, Any]) -> list[str]:
    """Per Kafka backlog variant: what an event cost the job and the broker in CPU.

    With both on the same cores, `cores / (job + broker)` events a second is the most
    they can do together, so a ratio to kafka-1w cannot exceed that over kafka-1w's rate.
    """
    out = []
    for name, r in variants.items():
        e = r["extra"]
        if not name.startswith("kafka-") or "job_cpu_us_per_event" not in e:
            continue
        share = r["events_per_s"] / e["cpu_bound_events_per_s"]
        out.append(
            f"{name}: CPU per event: job {e['job_cpu_us_per_event']:.1f} us"
            f" ({e['job_cores_while_scoring']:.2f} cores while scoring), broker"
            f" {e['broker_cpu_us_per_event']:.1f} us; {e['cores']} cores carry at most"
            f" {e['cpu_bound_events_per_s']:,.0f} ev/s of both: this run did {share:.0%} of it"
        )
        one = variants.get("kafka-1w")
        if name != "kafka-1w" and one is not None:
            out.append(
                f"  so {name} / kafka-1w cannot exceed"
                f" {e['cpu_bound_events_per_s'] / one['events_per_s']:.2f} on these cores"
            )
    return out
