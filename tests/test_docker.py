"""The team stack (docker/): the compose file validates, the images build, the stack starts on
loopback, and a flow run submitted to its CPU pool completes on the worker container, logging to
MLflow (artifacts proxied into S3) and persisting its Prefect result in S3.

Everything runs for real against the local Docker daemon (skipped without one, see conftest).
The stack runs under its own compose project name on free loopback ports, so it neither clashes
with a stack or server already running here nor touches its volumes; every container, volume and
network it creates is removed in a finally block. Builds happen in a temporary folder (TMPDIR),
never in the work tree. Images already built make this take about a minute; the first build of
the worker image takes several minutes, and of the Debian base image (root only) one more.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
BASE_IMAGE = "frugal/debian-bookworm:local"
STACK = ["prefect-db", "prefect-server", "mlflow-db", "s3", "s3-init", "mlflow", "worker-cpu"]

# Runs inside the worker container with its environment (PREFECT_API_URL, MLFLOW_TRACKING_URI,
# S3 credentials and endpoint, FRUGAL_RESULT_STORAGE, FRUGAL_POOL). It registers what
# `frugal deploy` registers for result storage (a saved RemoteFileSystem block: Prefect 3.8 reads
# a bare "s3://..." string as a block slug), deploys a one-task flow and waits for the run.
IN_WORKER = r'''
import os, pathlib, time
import mlflow, s3fs
from prefect import flow
from prefect.deployments import run_deployment
from prefect.filesystems import RemoteFileSystem

RemoteFileSystem(basepath=os.environ["FRUGAL_RESULT_STORAGE"]).save("frugal-results", overwrite=True)
src = pathlib.Path("/tmp/stack-check")
src.mkdir(exist_ok=True)
(src / "check.py").write_text("""
import mlflow
from prefect import flow, task

@task(persist_result=True)
def square(x: int) -> int:
    return x * x

@flow(result_storage="remote-file-system/frugal-results", persist_result=True)
def check(x: int = 7) -> int:
    mlflow.set_experiment("stack-check")
    with mlflow.start_run(run_name="check"):
        mlflow.log_param("x", x)
        mlflow.log_text("written by the worker", "check.txt")
    return square(x)
""")
flow.from_source(source=str(src), entrypoint="check.py:check").deploy(
    name="stack-check", work_pool_name=os.environ["FRUGAL_POOL"], print_next_steps=False)
started = time.monotonic()
run = run_deployment(name="check/stack-check", parameters={"x": 7}, timeout=240)
assert run.state.is_completed(), f"flow run ended {run.state.name}: {run.state.message}"
assert run.state.result() == 49
(found,) = mlflow.search_runs(experiment_names=["stack-check"], output_format="list")
assert mlflow.artifacts.load_text(found.info.artifact_uri + "/check.txt") == "written by the worker"
fs = s3fs.S3FileSystem()
assert fs.find("mlflow/artifacts"), "no MLflow artifact in the S3 bucket"
assert fs.ls(os.environ["FRUGAL_RESULT_STORAGE"].removeprefix("s3://")), "no Prefect result in S3"
print(f"STACK-CHECK OK flow run {time.monotonic() - started:.1f} s")
'''


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def compose() -> list[str]:
    """`docker compose` (v2) where installed, else Debian's `docker-compose` (1.29)."""
    if _run(["docker", "compose", "version"], 30).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") and _run(["docker-compose", "version"], 30).returncode == 0:
        return ["docker-compose"]
    pytest.skip("needs Docker Compose (docker compose or docker-compose)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _published_ports(service: dict) -> list[tuple[str, str]]:
    """(host_ip, published) of a service in `config` output: v2 writes dicts, v1 strings."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split(":")
            out.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) >= 2 else ""))
    return out


def test_compose_file_validates_and_publishes_on_loopback_only(compose: list[str]) -> None:
    for extra in ([], ["-f", str(DOCKER_DIR / "compose.minio.yaml")]):
        for profile in ([], ["--profile", "gpu"]):
            done = _run([*compose, "-f", str(COMPOSE_FILE), *extra, *profile, "config"], 60)
            assert done.returncode == 0, done.stderr
            services = yaml.safe_load(done.stdout)["services"]
            assert set(STACK) <= set(services)
            for name, service in services.items():
                for host_ip, _ in _published_ports(service):
                    assert host_ip == "127.0.0.1", f"{name} publishes a port beyond loopback"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert gpu["environment"]["FRUGAL_POOL"] == "frugal-gpu"


def _wait_http(url: str, deadline: float) -> None:
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return
                last = resp.status
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = exc
        time.sleep(1)
    raise AssertionError(f"{url} did not answer 200 in time (last: {last})")


def _untracked() -> set[str]:
    """Untracked or ignored files in docker/, tests/ and at the top level (where a build or a
    compose run could leave some; the rest of the tree may be in another engineer's hands)."""
    pathspecs = ["docker", "tests", ":(glob)*"]
    done = _run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *pathspecs], 60, cwd=REPO)
    return {line[3:] for line in done.stdout.splitlines() if line[:2] in ("??", "!!")}


def _remove_project(compose: list[str], project: str, env: dict[str, str]) -> None:
    """compose down -v, then whatever still carries the project label (a down that failed)."""
    try:
        down = [*compose, "-p", project, "-f", str(COMPOSE_FILE), "--profile", "gpu", "down", "-v", "--remove-orphans", "-t", "10"]
        _run(down, 180, env=env)
    except subprocess.TimeoutExpired:
        pass
    label = f"label=com.docker.compose.project={project}"
    for kind, rm in (("ps -aq", "rm -f -v"), ("volume ls -q", "volume rm -f"), ("network ls -q", "network rm")):
        ids = _run(["docker", *kind.split(), "--filter", label], 60).stdout.split()
        if ids:
            _run(["docker", *rm.split(), *ids], 120)


def test_stack_runs_a_flow_on_the_cpu_worker(compose: list[str], tmp_path: Path) -> None:
    if subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True).returncode != 0:
        if os.geteuid() != 0 or not shutil.which("debootstrap"):
            pytest.skip(f"{BASE_IMAGE} is missing and building it needs root and debootstrap: run sudo docker/base-image.sh")
    before = _untracked()
    timings: dict[str, float] = {}

    t = time.monotonic()
    built = _run([str(DOCKER_DIR / "build-images.sh")], 1800, env={**os.environ, "TMPDIR": str(tmp_path)})
    timings["build"] = time.monotonic() - t
    assert built.returncode == 0, built.stdout[-4000:] + built.stderr[-4000:]

    project = f"frugaltest{os.getpid()}"
    ports = {"FRUGAL_PREFECT_PORT": _free_port(), "FRUGAL_MLFLOW_PORT": _free_port(), "FRUGAL_S3_PORT": _free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    base = [*compose, "-p", project, "-f", str(COMPOSE_FILE)]
    try:
        t = time.monotonic()
        up = _run([*base, "up", "-d", "--no-build", *STACK], 420, env=env)
        assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
        deadline = time.monotonic() + 180
        prefect = f"http://127.0.0.1:{ports['FRUGAL_PREFECT_PORT']}/api"
        mlflow = f"http://127.0.0.1:{ports['FRUGAL_MLFLOW_PORT']}"
        _wait_http(f"{prefect}/health", deadline)
        _wait_http(f"{mlflow}/health", deadline)
        _wait_http(f"http://127.0.0.1:{ports['FRUGAL_S3_PORT']}/moto-api/", deadline)
        timings["up"] = time.monotonic() - t

        # The worker registers its pool (creating it) once it is connected to the server.
        pools: list[str] = []
        while time.monotonic() < deadline and "frugal-cpu" not in pools:
            request = urllib.request.Request(f"{prefect}/work_pools/filter", data=b"{}", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                pools = [p["name"] for p in json.load(resp)]
            time.sleep(1)
        assert "frugal-cpu" in pools, f"work pools: {pools}"

        t = time.monotonic()
        worker = _run([*base, "ps", "-q", "worker-cpu"], 60, env=env).stdout.strip()
        check = _run(["docker", "exec", "-i", worker, "python", "-"], 360, input=IN_WORKER)
        timings["flow"] = time.monotonic() - t
        assert "STACK-CHECK OK" in check.stdout, check.stdout[-4000:] + check.stderr[-6000:]

        # The host reaches MLflow's API too (its Host header is allowed, not only /health's).
        with urllib.request.urlopen(f"{mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stack-check", timeout=10) as resp:
            assert json.load(resp)["experiment"]["name"] == "stack-check"
    except BaseException:
        logs = _run([*base, "logs", "--no-color", "--tail", "40"], 120, env=env)
        print(logs.stdout[-20000:])
        raise
    finally:
        t = time.monotonic()
        _remove_project(compose, project, env)
        timings["down"] = time.monotonic() - t
        print("team stack timings (s):", {k: round(v, 1) for k, v in timings.items()})
    leftovers = _run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], 60).stdout.split()
    assert not leftovers, f"containers left behind: {leftovers}"
    assert _untracked() <= before, "the test left files in the work tree"
