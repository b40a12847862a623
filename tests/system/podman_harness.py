"""Build and run the image with podman, on machines where no registry can be reached.

- podman runs with a private containers.conf (through CONTAINERS_CONF, /etc is left
  alone): the `runc` runtime and explicit ulimits, since the default `crun` fails on
  rlimits and hybrid cgroups on some VMs.
- The base image is bootstrapped from Debian packages with mmdebstrap and imported as a
  local image; the tarball is cached under ~/.cache/bytewax-fraud so a machine whose
  podman storage was reset imports it again instead of bootstrapping.
- The build passes the host's CA bundle (read-only) and its pip index, if it has one
  that is not a local file, so pip inside the build reaches PyPI as the host's pip does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bytewax-fraud"
SUITE = "bookworm"
BASE_PACKAGES = "python3,python3-venv,python-is-python3,ca-certificates,passwd"
CONTAINERS_CONF = """\
# Written by tests/podman_harness.py for the container tests.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
INSTALL_HINT = (
    "run .ci/install-container-tools as root (Debian), or install podman, runc, mmdebstrap"
)


@dataclass
class Podman:
    """podman with the private configuration."""

    conf: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            ["podman", *args], env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
        return p


def podman_or_reason() -> tuple[Podman | None, str]:
    """A working podman, or why there is none (the tests skip with it)."""
    if shutil.which("podman") is None:
        return None, f"podman is not installed: {INSTALL_HINT}"
    if shutil.which("runc") is None:
        return None, f"runc is not installed (podman needs it here): {INSTALL_HINT}"
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    podman = Podman(conf)
    try:
        info = podman("info", "--format", "json", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "`podman info` did not answer within 60 s"
    if info.returncode != 0:
        return None, f"podman cannot run here: {info.stderr.strip()[-500:]}"
    return podman, ""


def base_image(podman: Podman) -> tuple[str, float]:
    """The local base image (bootstrapped or imported when missing) and the seconds it took."""
    key = hashlib.sha256(f"{SUITE} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    tag = f"localhost/bytewax-fraud-base:{SUITE}-{key}"
    t0 = time.monotonic()
    if podman("image", "exists", tag, check=False).returncode == 0:
        return tag, 0.0
    tarball = CACHE / f"base-{SUITE}-{key}.tar"
    if not tarball.exists():
        if shutil.which("mmdebstrap") is None:
            raise FileNotFoundError(f"mmdebstrap is not installed: {INSTALL_HINT}")
        partial = tarball.with_suffix(".partial.tar")
        subprocess.run(
            ["mmdebstrap", "--variant=minbase", f"--include={BASE_PACKAGES}", SUITE, str(partial)],
            check=True,
            capture_output=True,
            timeout=900,
        )
        partial.replace(tarball)
    podman("import", str(tarball), tag, timeout=300)
    return tag, time.monotonic() - t0


def _pip_build_args() -> list[str]:
    """The host's pip index and timeout, when they are something a container can reach."""
    args: list[str] = []
    index = os.environ.get("PIP_INDEX_URL", "")
    if index.startswith(("http://", "https://")):
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    timeout = os.environ.get("PIP_DEFAULT_TIMEOUT", "")
    if timeout.isdigit():
        args += ["--build-arg", f"PIP_DEFAULT_TIMEOUT={timeout}"]
    return args


def build(podman: Podman, tag: str, base: str, target: str = "cpu") -> float:
    """Build the image from the repository; returns the seconds it took.

    The previous image of this tag is removed afterwards (its build cache stays).
    """
    old = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False).stdout.strip()
    ca = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or str(CA_BUNDLE)
    mounts = ["-v", f"{ca}:{CA_BUNDLE}:ro"] if Path(ca).is_file() else []
    t0 = time.monotonic()
    podman(
        "build",
        "--format=docker",  # keeps the HEALTHCHECK (OCI images have none)
        "--pull=never",
        f"--target={target}",
        f"--build-arg=BASE={base}",
        *_pip_build_args(),
        *mounts,
        "-t",
        tag,
        str(ROOT),
        timeout=1200,
    )
    took = time.monotonic() - t0
    new = podman("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    if old and old != new:
        podman("rmi", old, check=False)
    return took


def image_size(podman: Podman, tag: str) -> int:
    return int(json.loads(podman("image", "inspect", tag).stdout)[0]["Size"])
