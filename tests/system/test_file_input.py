"""The job reading files (FRAUD_INPUT): kill -9 and resume, changed files, dead letters, memory.

The job runs as real processes (`python -m bytewax_fraud`) with a real RocksDB
state and recovery directory, as in test_recovery.py.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from recovery_harness import JobDirs, live_records, predictions, run, start

from bytewax_fraud.connectors.file_input import file_line, file_offset
from bytewax_fraud.records import DeadLetter
from bytewax_fraud.tools.backtest import quality_by_model
from bytewax_fraud.tools.produce import generated, write_file

EVENTS = 150_000
USERS = 20_000
SEED = 9
ENV = {"FRAUD_PARTITIONS": 4, "FRAUD_STATE_TTL": "12h", "FRAUD_SWEEP_INTERVAL": "0.2"}
TTL = 12 * 3600.0


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EVENTS generated events in three files: plain, gzipped, plain."""
    d = tmp_path_factory.mktemp("input")
    values = [v for _, v in generated(USERS, SEED, EVENTS)]
    third = EVENTS // 3
    names = ["day1.jsonl", "day2.jsonl.gz", "day3.jsonl"]
    for i, name in enumerate(names):
        chunk = values[i * third : EVENTS if i == 2 else (i + 1) * third]
        assert write_file(d / name, ((None, v) for v in chunk)) == len(chunk)
    return d


@pytest.fixture(scope="module")
def clean(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> JobDirs:
    """One uninterrupted replay of the files, the reference of the crash runs."""
    dirs = JobDirs(tmp_path_factory.mktemp("clean"))
    run(dirs, FRAUD_INPUT=inputs, **ENV)
    assert _lines(dirs.out / "predictions.jsonl") == EVENTS
    assert _lines(dirs.out / "dead_letters.jsonl") == 0
    return dirs


def _kill_while_running(
    p: subprocess.Popen[bytes], out: Path, delay: float, settle: float = 0.0
) -> int:
    """SIGKILL the job `delay` s after its first output (+ `settle`); lines it had written."""
    deadline = time.monotonic() + 180
    while p.poll() is None and _lines(out) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay + settle)
    assert p.poll() is None, "the job ended before the kill: make the input larger"
    p.send_signal(signal.SIGKILL)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, err.decode()[-2000:]
    return _lines(out)


def test_kill_9_and_resume_on_many_files_equals_a_clean_twin(
    tmp_path: Path, inputs: Path, clean: JobDirs
) -> None:
    dirs = JobDirs(tmp_path)
    rng = random.Random(13)
    written = []
    for _ in range(3):
        p = start(dirs, FRAUD_INPUT=inputs, **ENV)
        out = dirs.out / "predictions.jsonl"
        written.append(_kill_while_running(p, out, rng.uniform(0.2, 1.0)))
        # Exit by signal, and fewer outputs than the clean run: the kill cut a running job.
        assert written[-1] < EVENTS
    run(dirs, FRAUD_INPUT=inputs, **ENV)
    print(f"\npredictions written when each kill hit: {written} of {EVENTS}")
    assert predictions(dirs.out) == predictions(clean.out)
    assert live_records(dirs.state, TTL) == live_records(clean.state, TTL)
    # The backtest over the resumed runs' predictions is the clean run's.
    assert _backtest(dirs.out) == _backtest(clean.out)


def _backtest(out: Path) -> dict[str, object]:
    with (out / "predictions.jsonl").open("rb") as f:
        return {m: q.get() for m, q in quality_by_model(f).items()}


def test_a_file_shortened_under_a_resumed_run_stops_it_with_a_named_error(
    tmp_path: Path, inputs: Path
) -> None:
    d = tmp_path / "input"
    d.mkdir()
    for f in inputs.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    dirs = JobDirs(tmp_path / "job")
    p = start(dirs, FRAUD_INPUT=d, **ENV)
    # Some snapshots (every 0.5 s) before the kill, so the resume has a position to check.
    assert _kill_while_running(p, dirs.out / "predictions.jsonl", 0.5, settle=1.5) < EVENTS
    first = d / "day1.jsonl"
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    p = start(dirs, FRAUD_INPUT=d, **ENV)
    _, err = p.communicate(timeout=120)
    text = err.decode()
    assert p.returncode != 0
    assert "FileInputChanged" in text and f"input file {first} is shorter" in text, text[-2000:]


def test_a_malformed_line_is_a_dead_letter_naming_its_file_and_line(tmp_path: Path) -> None:
    d = tmp_path / "input"
    d.mkdir()
    good = [v for _, v in generated(50, 1, 20)]
    (d / "a.jsonl").write_bytes(b"\n".join(good[:10]) + b"\n")
    broken = b'{"transaction_id":"x1","user_id":"u0000001","amount":'
    negative = good[10].replace(b'"amount":', b'"amount":-')
    lines = [good[11], broken, good[12], negative, b"", *good[13:]]
    (d / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))
    dirs = JobDirs(tmp_path / "job")
    run(dirs, FRAUD_INPUT=d, **ENV)
    dead = [
        DeadLetter.model_validate_json(line)
        for line in (dirs.out / "dead_letters.jsonl").read_bytes().splitlines()
    ]
    where = sorted((d.origin.source, file_line(d.origin.offset), d.stage) for d in dead)
    second = str(d / "b.jsonl.gz")
    assert where == [(second, (1, 2), "decode"), (second, (1, 4), "validate")]
    assert {x.origin.offset for x in dead} == {file_offset(1, 2), file_offset(1, 4)}
    first = min(dead, key=lambda x: x.origin.offset)
    assert base64.b64decode(first.value_b64) == broken
    assert _lines(dirs.out / "predictions.jsonl") == len(good) - 1


def test_state_built_from_files_is_refused_to_the_generator(tmp_path: Path) -> None:
    d = tmp_path / "in.jsonl"
    write_file(d, generated(50, 1, 100))
    dirs = JobDirs(tmp_path / "job")
    run(dirs, FRAUD_INPUT=d, **ENV)
    p = start(dirs, FRAUD_EVENTS=100, **ENV)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    assert "was built from the files input and this run reads generator" in err.decode()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _peak_rss_mb(dirs: JobDirs, events: int, **env: object) -> float:
    """Run the job to its end, sampling its RSS every 0.1 s; the peak, in MB."""
    p = start(dirs, **ENV, **env)
    peak = 0
    while p.poll() is None:
        try:
            peak = max(peak, _rss_kb(p.pid))
        except OSError:
            break
        time.sleep(0.1)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()[-2000:]
    assert _lines(dirs.out / "predictions.jsonl") == events
    return peak / 1024


@pytest.mark.parametrize(
    "lines",
    [pytest.param(200_000, id="200k"), pytest.param(1_000_000, id="1M", marks=pytest.mark.slow)],
)
def test_memory_stays_flat_whatever_the_file_size(tmp_path: Path, lines: int) -> None:
    """A replay of a file peaks no higher than the generator feeding as many events.

    The generator holds no input in memory, so what the job's state (RocksDB
    memtables, caches) takes is the same in both runs and the difference is what
    reading the file costs.
    """
    users, seed = 5_000, 3
    path = tmp_path / "big.jsonl.gz"
    write_file(path, generated(users, seed, lines))
    size = path.stat().st_size
    replay = _peak_rss_mb(JobDirs(tmp_path / "file"), lines, FRAUD_INPUT=path)
    baseline = _peak_rss_mb(
        JobDirs(tmp_path / "gen"), lines, FRAUD_EVENTS=lines, FRAUD_USERS=users, FRAUD_SEED=seed
    )
    print(
        f"\n{lines:,} lines ({size / 1e6:.0f} MB gzipped): peak RSS {replay:.0f} MB reading the"
        f" file, {baseline:.0f} MB from the generator"
    )
    assert replay <= baseline * 1.10 + 30


def test_a_backtest_with_a_rollout_reports_each_model_against_the_labels(
    tmp_path: Path, model_dir: Path
) -> None:
    path = tmp_path / "history.jsonl.gz"
    write_file(path, generated(3_000, 4, 40_000))  # the generator's events carry `label`
    control = tmp_path / "control.jsonl"
    control.write_text(
        json.dumps(
            {
                "command": "load",
                "model_id": "canary",
                "path": str(model_dir / "stateless.onnx"),
                "rollout": 0.4,
            }
        )
        + "\n"
    )
    dirs = JobDirs(tmp_path / "job")
    err = run(
        dirs,
        FRAUD_INPUT=path,
        FRAUD_CONTROL_FILE=control,
        FRAUD_MODEL_DIR=model_dir,
        FRAUD_SUMMARY_FILE=tmp_path / "summary.json",
        **ENV,
    )
    models = json.loads((tmp_path / "summary.json").read_text())["models"]
    # The same figures, computed from the predictions the run wrote.
    by_model: dict[str, list[tuple[float, int]]] = {}
    for line in (dirs.out / "predictions.jsonl").read_bytes().splitlines():
        d = json.loads(line)
        by_model.setdefault(d["model"], []).append((d["probability"], d["label"]))
    assert len(by_model) == 2 and set(models) == set(by_model)
    for label, rows in by_model.items():
        probs = np.array([p for p, _ in rows])
        labels = np.array([y for _, y in rows])
        flagged = probs >= 0.5
        tp = int(np.sum(flagged & (labels == 1)))
        q = models[label]
        assert q["labelled"] == len(rows) and q["fraud"] == int(labels.sum()) > 0
        assert q["precision"] == round(tp / int(flagged.sum()), 4)
        assert q["recall"] == round(tp / int(labels.sum()), 4)
        assert 0 < q["pr_auc"] <= 1
        assert f"labels, model {label}: PR-AUC {q['pr_auc']}" in err
    assert _backtest(dirs.out) == models  # one run: the tool agrees with the summary
    print("\n" + "\n".join(x for x in err.splitlines() if "[fraud]" in x))


def test_labels_under_another_name_are_read_with_fraud_label_field(tmp_path: Path) -> None:
    values = [v for _, v in generated(500, 6, 3_000)]
    renamed = [
        v.replace(b'"label":1', b'"is_fraud":true').replace(b'"label":0', b'"is_fraud":false')
        for v in values
    ]
    assert not any(b'"label"' in v for v in renamed)
    path = tmp_path / "own.jsonl"
    path.write_bytes(b"\n".join(renamed) + b"\n")
    dirs = JobDirs(tmp_path / "job")
    run(
        dirs,
        FRAUD_INPUT=path,
        FRAUD_LABEL_FIELD="is_fraud",
        FRAUD_SUMMARY_FILE=tmp_path / "summary.json",
        **ENV,
    )
    (quality,) = json.loads((tmp_path / "summary.json").read_text())["models"].values()
    fraud = sum(b'"label":1' in v for v in values)
    assert quality["labelled"] == 3_000 and quality["fraud"] == fraud > 0
    preds = [json.loads(x) for x in (dirs.out / "predictions.jsonl").read_bytes().splitlines()]
    assert sum(p["label"] for p in preds) == fraud
