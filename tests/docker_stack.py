"""What the team-stack tests (tests/test_docker.py, tests/test_team_stack.py) share: running docker and compose,
free loopback ports, waiting for an HTTP answer, and removing a compose project with everything it made."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
BASE_IMAGE = "frugal/debian-bookworm:local"


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def tail(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout[-4000:] + done.stderr[-6000:]


def compose_command() -> list[str]:
    """`docker compose` (v2) where installed, else Debian's `docker-compose` (1.29); skips without either."""
    if run(["docker", "compose", "version"], 30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and run(["docker-compose", "version"], 30).returncode == 0:
        return ["docker-compose"]
    pytest.skip("needs Docker Compose (docker compose or docker-compose)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, deadline: float) -> str:
    """The body of the first 200 answer from `url` before `deadline` (time.monotonic)."""
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return resp.read().decode(errors="replace")
                last = resp.status
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 in time (last: {last})")


def need_base_image() -> None:
    """Skip unless the Debian base image exists or can be built here (the build scripts build it when missing)."""
    if run(["docker", "image", "inspect", BASE_IMAGE], 60).returncode != 0:
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            pytest.skip(f"{BASE_IMAGE} is missing and building it needs root and debootstrap: run sudo docker/base-image.sh")


def build_images(tmp: Path, *images: str) -> float:
    """docker/build-images.sh (cached layers make a rebuild seconds); its wall time."""
    need_base_image()
    started = time.monotonic()
    built = run([str(DOCKER_DIR / "build-images.sh"), *images], 1800, env={**os.environ, "TMPDIR": str(tmp)})
    assert built.returncode == 0, tail(built)
    return time.monotonic() - started


def remove_project(compose: list[str], project: str, env: dict[str, str], files: tuple[Path, ...] = (COMPOSE_FILE,)) -> None:
    """compose down -v, then whatever still carries the project label (a down that failed)."""
    try:
        down = [*compose, "-p", project, *(a for f in files for a in ("-f", str(f))), "--profile", "gpu", "down", "-v", "--remove-orphans"]
        run([*down, "-t", "10"], 180, env=env)
    except subprocess.TimeoutExpired:
        pass
    label = f"label=com.docker.compose.project={project}"
    for kind, rm in (("ps -aq", "rm -f -v"), ("volume ls -q", "volume rm -f"), ("network ls -q", "network rm")):
        ids = run(["docker", *kind.split(), "--filter", label], 60).stdout.split()
        if ids:
            run(["docker", *rm.split(), *ids], 120)


@dataclass
class Project:
    """One compose project of the stack on free loopback ports: `project("up", "-d")` runs `compose -p NAME -f ... up -d`."""

    compose: list[str]
    name: str
    env: dict[str, str]
    files: tuple[Path, ...] = (COMPOSE_FILE,)

    @classmethod
    def new(cls, compose: list[str], prefix: str, files: tuple[Path, ...] = (COMPOSE_FILE,)) -> Project:
        ports = {key: str(free_port()) for key in ("FRUGAL_PREFECT_PORT", "FRUGAL_MLFLOW_PORT", "FRUGAL_S3_PORT")}
        return cls(compose, f"{prefix}{os.getpid()}", {**os.environ, **ports}, files)

    def port(self, key: str) -> str:
        return self.env[f"FRUGAL_{key.upper()}_PORT"]

    def __call__(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        files = [a for f in self.files for a in ("-f", str(f))]
        return run([*self.compose, "-p", self.name, *files, *args], timeout, env=self.env, **kwargs)

    def logs(self) -> str:
        return self("logs", "--no-color", "--tail", "60", timeout=120).stdout[-20000:]

    def remove(self) -> None:
        remove_project(self.compose, self.name, self.env, self.files)
