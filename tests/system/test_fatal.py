"""Fatal storage and broker errors: one line naming the cause and the fix, a non-zero exit.

Real faults, no mocks: the state (or output) directory on a small tmpfs that a
filler file fills while the job runs, and the Kafka broker paused (SIGSTOP) past a
short `message.timeout.ms`. After the cause is fixed, the resumed run must equal
a clean run, prediction for prediction and record for record.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import Broker
from recovery_harness import ROOT, JobDirs, live_records, predictions, run, start

from bytewax_fraud.connectors import kafka_connection
from bytewax_fraud.connectors.kafka.admin import admin_client, create_job_topics, create_topic
from bytewax_fraud.errors import FraudError, StateDiskFull, StateError
from bytewax_fraud.process import fatal
from bytewax_fraud.settings import load_settings
from bytewax_fraud.state.rocksdb import io_error
from bytewax_fraud.tools.produce import generated, produce
from bytewax_fraud.tools.tail import messages

EVENTS = 60_000
ENV = {"FRAUD_EVENTS": EVENTS, "FRAUD_USERS": 5_000, "FRAUD_PARTITIONS": 4, "FRAUD_SEED": 9}
TTL = 30 * 86400.0


def error_lines(stderr: str) -> list[str]:
    """The lines a failed run printed that are not librdkafka's or the summary's."""
    assert "Traceback" not in stderr, stderr[-3000:]
    for noise in ("panicked", "Box<dyn Any>", "stack backtrace"):
        assert noise not in stderr, stderr[-3000:]
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


# --- the one line (no job) ------------------------------------------------------------------


def test_root_fraud_error_is_found_under_bytewax_wrappers() -> None:
    try:
        try:
            try:
                raise OSError(28, "No space left on device")
            except OSError as exc:
                raise io_error(Path("/v/state/partition-0001"), "be written", exc) from exc
        except StateError as exc:
            raise RuntimeError('error calling `builder` in step "fraud.score"') from exc
    except RuntimeError as exc:
        line = fatal.one_line(exc)
    assert line is not None and line.startswith("StateDiskFull: the state store")
    assert "free space on the volume holding FRAUD_STATE_DIR (/v/state)" in line
    assert "\n" not in line


def test_full_disk_outside_our_code_is_named_and_unknown_errors_keep_their_traceback() -> None:
    sqlite_full = RuntimeError("database or disk is full")
    assert fatal.one_line(RuntimeError("error in step")) is None  # a bug: usual traceback
    wrapped = RuntimeError("snapshot failed")
    wrapped.__cause__ = sqlite_full
    line = fatal.one_line(wrapped)
    assert line is not None and line.startswith("DiskFull:") and "FRAUD_RECOVERY_DIR" in line


def test_traceback_only_with_fraud_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise StateDiskFull("the state store x cannot be written. Fix: free space")
    except StateDiskFull as exc:
        err = exc
    monkeypatch.delenv(fatal.DEBUG_ENV, raising=False)
    assert fatal.report(err)
    quiet = capsys.readouterr().err
    assert quiet.count("\n") == 1 and quiet.startswith("error: StateDiskFull:")
    assert "FRAUD_DEBUG=1 shows the traceback" in quiet
    monkeypatch.setenv(fatal.DEBUG_ENV, "1")
    assert fatal.report(err)
    assert "Traceback" in capsys.readouterr().err
    assert not fatal.report(ValueError("a bug"))
    assert issubclass(StateDiskFull, FraudError)


# --- disk full ------------------------------------------------------------------------------


@contextlib.contextmanager
def small_volume(path: Path, size_mb: int) -> Iterator[Path]:
    """A tmpfs of `size_mb` MiB mounted at `path` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
        capture_output=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mount.stderr.decode().strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(volume: Path) -> Path:
    """Write a filler file until the volume is full; returns it."""
    filler = volume / "filler"
    block = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(block)
        except OSError:
            pass
    for _ in range(64):  # the last partial megabyte, in small pieces
        try:
            with open(filler, "ab", buffering=0) as f:
                f.write(b"\0" * 4096)
        except OSError:
            break
    return filler


def wait_for_output(p: subprocess.Popen[bytes], path: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.01)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> JobDirs:
    """One uninterrupted embedded run, the reference."""
    dirs = JobDirs(tmp_path_factory.mktemp("fatal-clean"))
    run(dirs, **ENV)
    return dirs


@pytest.mark.parametrize(
    ("on_volume", "error_class"),
    [("state", "StateDiskFull"), ("out", "OutputError")],
)
def test_disk_full_mid_run_stops_with_one_line_and_resumes_exactly(
    tmp_path: Path, clean: JobDirs, on_volume: str, error_class: str
) -> None:
    dirs = JobDirs(tmp_path / "job")
    dirs.root.mkdir(parents=True)
    with small_volume(tmp_path / "volume", 64) as volume:
        where = {"state": "FRAUD_STATE_DIR", "out": "FRAUD_OUTPUT_DIR"}[on_volume]
        env = {**ENV, where: str(volume / on_volume), "RUST_BACKTRACE": "1"}
        out_dir = volume / "out" if on_volume == "out" else dirs.out
        # Paced, so the volume fills while the job is still working.
        p = start(dirs, FRAUD_RATE=8_000, **env)
        wait_for_output(p, out_dir / "predictions.jsonl")
        t0 = time.monotonic()
        filler = fill(volume)
        _, err = p.communicate(timeout=120)
        stopped = time.monotonic() - t0
        stderr = err.decode()
        assert p.returncode == 2, stderr[-3000:]
        (line,) = error_lines(stderr)
        assert line.startswith(f"error: {error_class}:") and "Fix: free space" in line, line
        assert where in line
        scored_before = len((out_dir / "predictions.jsonl").read_text().splitlines())
        assert 0 < scored_before < EVENTS  # it failed mid-run
        print(
            f"\n{on_volume}: stopped {stopped:.2f} s after filling, {scored_before} scored: {line}"
        )

        filler.unlink()  # the operator frees space, and restarts
        run(dirs, **env)
        got = predictions(out_dir)
        assert len(got) == EVENTS
        assert got == predictions(clean.out)
        state = volume / "state" if on_volume == "state" else dirs.state
        assert live_records(state, TTL) == live_records(clean.state, TTL)


def test_disk_full_through_bytewax_run_is_one_line(tmp_path: Path) -> None:
    dirs = JobDirs(tmp_path / "job")
    dirs.root.mkdir(parents=True)
    with small_volume(tmp_path / "volume", 64) as volume:
        env = dirs.env(**ENV, FRAUD_RATE=12_000, FRAUD_STATE_DIR=str(volume / "state"))
        del env["FRAUD_RECOVERY_DIR"]  # bytewax.run takes its own -r flags
        p = subprocess.Popen(
            [sys.executable, "-m", "bytewax.run", "dataflows.fraud", "-w", "2"],
            env=env,
            cwd=dirs.root,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_output(p, dirs.out / "predictions.jsonl")
        fill(volume)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 1, err.decode()[-3000:]
        (line,) = error_lines(err.decode())
        assert line.startswith("error: StateDiskFull:") and "FRAUD_STATE_DIR" in line


# --- brokers gone ---------------------------------------------------------------------------

KAFKA_EVENTS = 40_000


def _kafka_env(bootstrap: str, prefix: str, name: str, **props: Any) -> dict[str, Any]:
    admin = admin_client({"bootstrap.servers": bootstrap})
    out = (f"{prefix}-{name}-predictions", f"{prefix}-{name}-dead-letters")
    for t in out:
        create_topic(admin, t, 4)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FRAUD_TOPIC_TRANSACTIONS": f"{prefix}-transactions",
        "FRAUD_TOPIC_PREDICTIONS": out[0],
        "FRAUD_TOPIC_DEAD_LETTERS": out[1],
        "FRAUD_TOPIC_CONTROL": f"{prefix}-no-control",
        "FRAUD_KAFKA_STOP_AT_END": "1",
        "FRAUD_PARTITIONS": 4,
        "FRAUD_BATCH_MAX": 128,
        "FRAUD_KAFKA_PROPERTIES": json.dumps(props),
    }


def _predictions(bootstrap: str, topic: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in messages({"bootstrap.servers": bootstrap}, topic, 4):
        d = json.loads(m.value())
        d.pop("latency_ms")
        text = json.dumps(d, sort_keys=True)
        assert out.setdefault(d["transaction_id"], text) == text  # duplicates are identical
    return out


def _produced(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe"})
    try:
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), 5)[1] for p in range(4))
    finally:
        c.close()


@pytest.mark.kafka
def test_brokers_gone_past_the_delivery_timeout_stop_with_one_line_and_resume_exactly(
    own_broker: Broker, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap_servers
    prefix = f"gone-{uuid.uuid4().hex[:6]}"
    admin = admin_client({"bootstrap.servers": bootstrap})
    create_job_topics(
        admin, 4, f"{prefix}-transactions", f"{prefix}-p", f"{prefix}-d", 8 * 1024 * 1024
    )
    config = kafka_connection(load_settings(kafka_bootstrap_servers=bootstrap)).producer()
    produce(config, f"{prefix}-transactions", 4, generated(2_000, 4, KAFKA_EVENTS))

    clean = JobDirs(tmp_path / "clean")
    clean_env = _kafka_env(bootstrap, prefix, "clean")
    run(clean, **clean_env)
    want = _predictions(bootstrap, clean_env["FRAUD_TOPIC_PREDICTIONS"])
    assert len(want) == KAFKA_EVENTS

    dirs = JobDirs(tmp_path / "outage")
    short = {"message.timeout.ms": 3000, "socket.timeout.ms": 2000}
    env = _kafka_env(bootstrap, prefix, "outage", **short)
    p = start(dirs, RUST_BACKTRACE="1", **env)
    deadline = time.monotonic() + 120
    while _produced(bootstrap, env["FRAUD_TOPIC_PREDICTIONS"]) == 0:
        assert p.poll() is None and time.monotonic() < deadline, "the job never wrote"
        time.sleep(0.05)
    own_broker.pause()
    t0 = time.monotonic()
    try:
        _, err = p.communicate(timeout=120)
        stopped = time.monotonic() - t0
    finally:
        own_broker.resume()
    stderr = err.decode()
    assert p.returncode == 2, stderr[-3000:]
    (line,) = error_lines(stderr)
    assert line.startswith("error: KafkaBrokersGone:"), line
    assert "message.timeout.ms (3000 ms)" in line and "Fix: bring the brokers back" in line
    print(f"\nbrokers gone: stopped {stopped:.1f} s after the pause: {line}")

    # The brokers are back: the job resumes (default timeouts) and writes what was missing.
    run(dirs, **{**env, "FRAUD_KAFKA_PROPERTIES": "{}"})
    got = _predictions(bootstrap, env["FRAUD_TOPIC_PREDICTIONS"])
    assert got == want
    assert live_records(dirs.state, TTL) == live_records(clean.state, TTL)


def test_bad_setting_at_start_is_a_named_error_without_traceback(tmp_path: Path) -> None:
    env = JobDirs(tmp_path).env(FRAUD_EVENTS=10, FRAUD_STATE_TTL="not-a-duration")
    p = subprocess.run(
        [sys.executable, "-m", "bytewax_fraud"], env=env, cwd=ROOT, capture_output=True
    )
    assert p.returncode == 2
    assert p.stderr.decode().startswith("error: SettingsError: invalid settings")
    assert "Traceback" not in p.stderr.decode()
