"""The alert rules and the dashboard against real Prometheus tools and a running job.

- `promtool check rules` and `promtool test rules` (deploy/prometheus/alerts_test.yml
  holds a firing case and a look-alike for every alert);
- a real Prometheus server on loopback scrapes `python -m bytewax_fraud` (generator
  input at an offered rate, recovery on, a 50 % candidate model and one bad control
  command), and every PromQL expression of the dashboard and of the rules is
  evaluated through its HTTP API: each must return series with plausible values.

Needs Debian's `prometheus` package (`.ci/install-prometheus` installs it); without
it these tests skip and say so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
RATE = 1500  # offered events/s: enough to measure, little CPU on a shared machine
JOB = "fraud"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not on PATH: run .ci/install-prometheus (Debian: prometheus)"
)
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not on PATH: run .ci/install-prometheus (Debian: prometheus)",
)


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_accepts_the_example_config() -> None:
    config = RULES.parent / "prometheus.yml"
    out = subprocess.run(
        [str(PROMTOOL), "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "alerts.yml" in out.stdout and "rules found" in out.stdout, out.stdout


@needs_promtool
def test_every_alert_has_a_firing_unit_test_and_they_pass() -> None:
    out = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULE_TESTS.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    alerts = {line.split(":", 1)[1].strip() for line in _lines(RULES) if "- alert:" in line}
    tested = _lines(RULE_TESTS)
    for alert in alerts:
        # A test case that expects it to fire (exp_labels naming it) exists for each alert.
        assert any(f"alertname: {alert}," in line for line in tested), alert
    runbook = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in runbook, f"docs/operations.md has no runbook for {alert}"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


@dataclass
class Prom:
    """A running Prometheus server's HTTP API."""

    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        got = _get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        assert got["status"] == "success", (expr, got)
        assert got["data"]["resultType"] == "vector", (expr, got["data"]["resultType"])
        return list(got["data"]["result"])

    def rules(self) -> list[dict[str, Any]]:
        groups = _get(f"{self.url}/api/v1/rules")["data"]["groups"]
        return [rule for g in groups for rule in g["rules"]]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def running_job(tmp_path: Path, model_dir: Path) -> Iterator[tuple[int, Path]]:
    """The embedded job at RATE ev/s, metrics on a free port; yields the port and control file."""
    control = tmp_path / "control.jsonl"
    load = {"command": "load", "model_id": "canary", "path": "stateless.onnx", "rollout": 0.5}
    control.write_text(json.dumps(load) + "\n")
    port = _free_port()
    env = {
        **os.environ,
        "FRAUD_METRICS_PORT": str(port),
        "FRAUD_RATE": str(RATE),
        # A bound, so the job ends by itself if this test dies; the test stops it first.
        "FRAUD_EVENTS": str(RATE * 180),
        "FRAUD_USERS": "5000",
        "FRAUD_PARTITIONS": "4",
        "FRAUD_STATE_DIR": str(tmp_path / "state"),
        "FRAUD_OUTPUT_DIR": str(tmp_path / "out"),
        "FRAUD_RECOVERY_DIR": str(tmp_path / "recovery"),
        "FRAUD_SNAPSHOT_INTERVAL": "1",
        "FRAUD_STATUS_INTERVAL": "0",
        "FRAUD_CONTROL_FILE": str(control),
        "FRAUD_MODEL_DIR": str(model_dir),
    }
    log = (tmp_path / "job.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bytewax_fraud"], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    try:
        yield port, control
        assert proc.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def prometheus(tmp_path: Path, running_job: tuple[int, Path]) -> Iterator[Prom]:
    """A Prometheus server on loopback scraping the job every second, with the rules loaded."""
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{running_job[0]}"]}],
                    }
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            str(PROMETHEUS),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=log,
    )
    try:
        yield Prom(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)
        log.close()


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, expression) of every target, with the job variable set."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"].replace("$job", JOB))
        for panel in dash["panels"]
        for target in panel.get("targets", [])
    ]


def _values(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result]


Check = Callable[[list[dict[str, Any]]], bool]


def _all(pred: Callable[[float], bool]) -> Check:
    return lambda result: all(pred(v) for v in _values(result))


#: What a healthy job at RATE ev/s must show, per dashboard panel. Every expression must
#: also return at least one series of finite values (event-time lag may be negative: the
#: generator's event times run ahead of the wall clock).
PANELS: dict[str, Check] = {
    "Throughput": _all(lambda v: 0.3 * RATE < v < 3 * RATE),
    "End-to-end latency": _all(lambda v: 0 < v < 10),
    "Model call and batch": _all(lambda v: 0 < v <= 2048),
    "Consumer lag (messages)": _all(lambda v: 0 <= v < 20 * RATE),
    "Time to drain the lag at the current rate": _all(lambda v: 0 <= v < 60),
    "Event-time lag (wall clock - watermark)": lambda r: len(r) == 4,
    "Time since the last snapshot": lambda r: len(r) == 4 and all(v < 15 for v in _values(r)),
    "Snapshot duration": _all(lambda v: 0 < v < 5),
    "Replayed and expired": _all(lambda v: v >= 0),
    "Dead letters by reason": lambda r: any(x["metric"].get("reason") for x in r),
    "Dead-letter share of input": _all(lambda v: 0 < v < 0.01),
    "Output delivery failures": _all(lambda v: v == 0),
    "Active model": lambda r: len(r) == 1 and "@" in r[0]["metric"]["model"],
    "Candidate rollout share": _all(lambda v: v == 0.5),
    # rate() over 5 minutes of a series younger than that reads low; the split is exact.
    "Events scored per model": lambda r: (
        len(r) == 2 and 0.3 < _values(r)[0] / sum(_values(r)) < 0.7
    ),
    "Mean predicted probability per model": lambda r: len(r) == 2 and _all(lambda v: 0 < v < 1)(r),
    "Share flagged (probability > 0.5) per model": _all(lambda v: 0 <= v <= 1),
    "Score distribution": lambda r: len(r) == 15,  # the buckets and +Inf
    "Resident memory per process": _all(lambda v: 50e6 < v < 16e9),
    "CPU per process": _all(lambda v: 0 < v < 16),
    "State on disk per partition": lambda r: len(r) == 4 and _all(lambda v: v > 0)(r),
    "User records per partition": lambda r: len(r) == 4 and _all(lambda v: v > 0)(r),
    "Processes up": _all(lambda v: v == 1),
}

#: A healthy run must not trip these alerts' expressions.
QUIET = {
    "FraudJobDown",
    "FraudJobStalled",
    "FraudConsumerLagGrowing",
    "FraudSnapshotStale",
    "FraudDeadLetterSpike",
}


def _problems(prom: Prom) -> list[str]:
    """Everything that is not (yet) as a healthy, scraped job should look."""
    problems = []
    for title, expr in dashboard_queries():
        result = prom.query(expr)
        values = _values(result)
        if not result or not all(math.isfinite(v) for v in values):
            problems.append(f"dashboard {title!r}: {expr} -> {values}")
        elif not PANELS[title](result):
            problems.append(f"dashboard {title!r}: implausible {expr} -> {result}")
    rules = prom.rules()
    for rule in rules:
        if rule["health"] != "ok":
            problems.append(f"rule {rule['name']}: health {rule['health']} {rule.get('lastError')}")
    records = {r["name"]: r["query"] for r in rules if r["type"] == "recording"}
    for name, expr in records.items():
        values = _values(prom.query(expr))
        if not values or not all(math.isfinite(v) and v >= 0 for v in values):
            problems.append(f"recording rule {name}: {expr} -> {values}")
        if not _values(prom.query(name)):
            problems.append(f"recording rule {name}: Prometheus has not recorded it yet")
    ratio = {
        r["metric"]["model"]: float(r["value"][1])
        for r in prom.query(
            "job_model:fraud_predicted_probability:mean15m"
            " / on (job) group_left () job:fraud_predicted_probability:mean6h"
        )
    }
    for rule in (r for r in rules if r["type"] == "alerting"):
        fired = prom.query(rule["query"])
        if rule["name"] in QUIET and fired:
            problems.append(f"alert {rule['name']} on a healthy job: {fired}")
        if rule["name"] == "FraudModelScoreShift":
            # Exactly the models whose 15-minute mean is off the job's mean by > 1.5x.
            shifted = {m for m, v in ratio.items() if v > 1.5 or v < 0.67}
            got = {r["metric"]["model"] for r in fired}
            if len(ratio) != 2 or got != shifted:
                problems.append(f"FraudModelScoreShift: {got} for ratios {ratio}")
    return problems


def _wait_until_scraped(prom: Prom, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if _values(prom.query(f'fraud_events_in_total{{job="{JOB}"}} > 0')):
                return
        except OSError:  # the server is still starting
            pass
        time.sleep(0.5)
    raise AssertionError("Prometheus did not scrape the job within the time limit")


@needs_prometheus
def test_prometheus_scrapes_the_job_and_every_query_returns_plausible_series(
    prometheus: Prom, running_job: tuple[int, Path]
) -> None:
    assert set(PANELS) == {title for title, _ in dashboard_queries()}
    started = time.monotonic()
    deadline = started + 60
    _wait_until_scraped(prometheus, deadline)
    # A bad command once the counters are scraped (rate() cannot see an increase that
    # happened before a series' first sample): one dead letter, stage `control`.
    with running_job[1].open("a") as control:
        control.write("{not json\n")
    problems = ["not queried yet"]
    while problems and time.monotonic() < deadline:
        time.sleep(2)
        problems = _problems(prometheus)
    assert not problems, "\n".join(problems)
    means = prometheus.query("job_model:fraud_predicted_probability:mean15m")
    shifted = prometheus.query('ALERTS{alertname="FraudModelScoreShift"}')
    print(
        f"all checks passed {time.monotonic() - started:.1f} s after Prometheus started;"
        f" mean score per model {[(m['metric']['model'], m['value'][1]) for m in means]};"
        f" FraudModelScoreShift pending for {[a['metric']['model'] for a in shifted]}"
    )
