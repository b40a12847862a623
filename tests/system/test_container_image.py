"""The real image, built and run with podman (marker `container`).

Builds the CPU target on a local Debian base (tests/podman_harness.py), then runs the
bounded embedded job in it with the declared volumes and no network, and checks:
every prediction, equal to a bare-process run of the same settings; files owned by
the image's uid; nothing written outside the volumes (also with `--read-only`); the
resume; the HEALTHCHECK against a running job and without one; and that `podman stop`
stops the job gracefully (exit 0) and the next run resumes with nothing replayed.
Skips with the reason where podman cannot run.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from podman_harness import Podman, base_image, build, image_size, podman_or_reason
from recovery_harness import JobDirs, predictions, run

pytestmark = pytest.mark.container

TAG = "localhost/bytewax-fraud:test"
UID = 10001
EVENTS = 20_000
JOB = {"FRAUD_EVENTS": EVENTS, "FRAUD_USERS": 2_000, "FRAUD_SEED": 3, "FRAUD_STATUS_INTERVAL": 0}
#: Paths podman itself manages in every container (bind-mounted name resolution).
PODMAN_MANAGED = {
    "/etc",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/run",
    "/run/.containerenv",
}


def _say(config: pytest.Config, line: str) -> None:
    """Print past pytest's capture, so CI logs show the figures."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"\n[container] {line}", flush=True)


@pytest.fixture(scope="module")
def podman() -> Podman:
    found, reason = podman_or_reason()
    if found is None:
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def image(podman: Podman, pytestconfig: pytest.Config) -> str:
    try:
        base, base_s = base_image(podman)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    build_s = build(podman, TAG, base)
    size, base_size = image_size(podman, TAG), image_size(podman, base)
    _say(
        pytestconfig,
        f"base {base} ({base_size / 1e6:.0f} MB, {base_s:.1f} s to bootstrap/import);"
        f" image {TAG}: {size / 1e6:.0f} MB ({(size - base_size) / 1e6:.0f} MB over the base),"
        f" built in {build_s:.1f} s",
    )
    return TAG


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The same job as a bare process: the predictions the image must reproduce."""
    dirs = JobDirs(tmp_path_factory.mktemp("bare"))
    run(dirs, **JOB)
    return predictions(dirs.out)


class Container:
    """One job container on a set of host directories mounted at the image's volumes."""

    def __init__(self, podman: Podman, image: str, root: Path) -> None:
        self.podman, self.image, self.root = podman, image, root
        self.names: list[str] = []
        for d in ("state", "recovery", "out"):
            (root / d).mkdir(parents=True, exist_ok=True)

    @property
    def out(self) -> Path:
        return self.root / "out"

    def args(self, env: dict[str, Any], *extra: str) -> list[str]:
        name = f"fraud-test-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        volumes = [f"-v={self.root / d}:/data/{d}:U" for d in ("state", "recovery", "out")]
        return [
            f"--name={name}",
            "--network=none",
            *volumes,
            *(f"-e={k}={v}" for k, v in env.items()),
            *extra,
            self.image,
        ]

    def run(self, *extra: str, **env: Any) -> tuple[str, str]:
        """Run the job to its end; returns the container's name and its log."""
        args = self.args({**JOB, **env}, *extra)
        self.podman("run", *args, timeout=300)
        name = self.names[-1]
        return name, self.logs(name)

    def start(self, *extra: str, **env: Any) -> str:
        self.podman("run", "-d", *self.args({**JOB, **env}, *extra))
        return self.names[-1]

    def logs(self, name: str) -> str:
        p = self.podman("logs", name)
        return p.stdout + p.stderr

    def exit_code(self, name: str) -> int:
        return int(self.podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout)

    def changes_outside_volumes(self, name: str) -> list[str]:
        lines = self.podman("diff", name).stdout.splitlines()
        paths = [line.split(maxsplit=1)[1] for line in lines if line.strip()]
        return [p for p in paths if p not in PODMAN_MANAGED and not p.startswith("/data/")]

    def remove_all(self) -> None:
        for name in self.names:
            self.podman("rm", "-f", "-t", "0", name, check=False)


@pytest.fixture
def container(podman: Podman, image: str, tmp_path: Path) -> Iterator[Container]:
    c = Container(podman, image, tmp_path)
    yield c
    c.remove_all()


def _lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_bounded_job_scores_every_event_as_the_image_user_and_resumes(
    container: Container, reference: dict[str, str]
) -> None:
    name, log = container.run()
    assert container.exit_code(name) == 0, log[-3000:]
    assert _lines(container.out / "predictions.jsonl") == EVENTS
    assert predictions(container.out) == reference
    files = [p for p in container.root.rglob("*")]
    assert len(files) > 10
    assert {p.stat().st_uid for p in files} == {UID}, "every file is the image user's"
    assert container.changes_outside_volumes(name) == []

    name, log = container.run()
    assert container.exit_code(name) == 0, log[-3000:]
    assert "nothing new to score" in log
    assert _lines(container.out / "predictions.jsonl") == EVENTS


def test_read_only_root_file_system(container: Container, reference: dict[str, str]) -> None:
    # No tmpfs either: the volumes are the only writable places.
    name, log = container.run("--read-only", "--read-only-tmpfs=false")
    assert container.exit_code(name) == 0, log[-3000:]
    assert "Read-only file system" not in log and "Failed to persist" not in log, log[-3000:]
    assert predictions(container.out) == reference


def _wait_healthy(container: Container, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        p = container.podman("healthcheck", "run", name, check=False)
        if p.returncode == 0:
            return
        state = container.podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", container.logs(name)[-3000:]
        assert time.monotonic() < deadline, p.stdout + p.stderr
        time.sleep(1.0)


def test_healthcheck_and_podman_stop_then_a_clean_resume(
    container: Container, reference: dict[str, str], pytestconfig: pytest.Config
) -> None:
    # Paced so that the stop lands mid-run; the scores do not depend on the pacing.
    name = container.start(FRAUD_RATE=2_000)
    _wait_healthy(container, name)
    deadline = time.monotonic() + 60
    while _lines(container.out / "predictions.jsonl") < 2_000:
        assert time.monotonic() < deadline, container.logs(name)[-3000:]
        time.sleep(0.2)

    t0 = time.monotonic()
    container.podman("stop", "-t", "30", name, timeout=60)
    took = time.monotonic() - t0
    log = container.logs(name)
    assert container.exit_code(name) == 0, log[-3000:]
    assert "stopped by SIGTERM" in log, log[-3000:]
    assert took < 10, f"podman stop took {took:.1f} s: the job did not stop on SIGTERM"
    stopped_at = _lines(container.out / "predictions.jsonl")
    assert 0 < stopped_at < EVENTS
    _say(pytestconfig, f"podman stop: exit 0 in {took:.2f} s, after {stopped_at:,} predictions")

    name, log = container.run()
    assert container.exit_code(name) == 0, log[-3000:]
    assert f"scored {EVENTS - stopped_at:,} events" in log and "replayed 0;" in log, log[-2000:]
    assert _lines(container.out / "predictions.jsonl") == EVENTS  # each prediction once
    assert predictions(container.out) == reference


def test_healthcheck_fails_without_a_job(podman: Podman, image: str) -> None:
    name = f"fraud-test-{uuid.uuid4().hex[:8]}"
    podman("run", "-d", f"--name={name}", "--network=none", "--entrypoint=sleep", image, "120")
    try:
        p = podman("healthcheck", "run", name, check=False)
        assert p.returncode != 0, "the HEALTHCHECK passed with no job running"
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)
