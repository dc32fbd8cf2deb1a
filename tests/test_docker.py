"""The team stack (docker/): the compose file validates, the images build, the stack starts on
loopback, a flow run submitted to its CPU pool completes on the worker container (MLflow run with
its artifact proxied into S3, Prefect result persisted in S3), and the smoke pipeline runs in
`workers` mode against the stack.

Everything runs for real against the local Docker daemon (skipped without one, see conftest).
The stack runs under its own compose project name on free loopback ports, so it neither clashes
with a stack or server already running here nor touches its volumes; every container, volume and
network it creates is removed when the module's tests are done. Builds happen in a temporary
folder, never in the work tree. With the images built, the module takes a few minutes; the first
build of the worker image several more, and of the Debian base image (root only) one more.

The serving image (docker/serve.Dockerfile) is built from a smoke run's ONNX champion, started on a
loopback port, and asked for predictions with a key made inside the container. One test needs no
Docker: the image's requirements pin the lock's versions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker_stack as ds
import pytest
import yaml
from docker_stack import COMPOSE_FILE, DOCKER_DIR, REPO

# Tests that need the daemon are marked docker (skipped without one, see conftest) and slow; the pin check needs neither.

LOCK = REPO / "requirements" / "lock.txt"
GPU_BASE_IMAGE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"  # build-images.sh's default
SERVE_IMAGE = "frugal/serve:test"
# The seeds of every venv, not installed from the lock.
VENV_SEEDS = {"pip", "setuptools"}
STACK = ["prefect-db", "prefect-server", "mlflow-db", "s3", "s3-init", "redis", "mlflow", "worker-cpu"]
RESULT_STORAGE = yaml.safe_load((REPO / "configs" / "team.yaml").read_text())["result_storage"]

# Runs inside the worker container with its environment (PREFECT_API_URL, MLFLOW_TRACKING_URI, S3
# credentials and endpoint, FRUGAL_POOL). It saves the result storage the way the pipeline does
# (a RemoteFileSystem block: Prefect 3.8 reads a bare "s3://..." string as a block slug), deploys a
# one-task flow from a local folder, as `frugal deploy` does, and waits for its run.
IN_WORKER = r'''
import os, pathlib, sys, time
import mlflow, s3fs
from prefect import flow
from prefect.deployments import run_deployment
from prefect.filesystems import RemoteFileSystem

storage = sys.argv[1]
RemoteFileSystem(basepath=storage).save("stack-check-results", overwrite=True)
src = pathlib.Path("/tmp/stack-check")
src.mkdir(exist_ok=True)
(src / "check.py").write_text("""
import mlflow
from prefect import flow, task

@task(persist_result=True)
def square(x: int) -> int:
    return x * x

@flow(result_storage="remote-file-system/stack-check-results", persist_result=True)
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
assert fs.ls(storage.removeprefix("s3://")), "no Prefect result in S3"
print(f"STACK-CHECK OK flow run {time.monotonic() - started:.1f} s")
'''


@pytest.fixture(scope="module")
def compose() -> list[str]:
    return ds.compose_command()


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


@pytest.mark.docker
@pytest.mark.slow
def test_compose_file_validates_and_publishes_on_loopback_only(compose: list[str]) -> None:
    for extra in ([], ["-f", str(DOCKER_DIR / "compose.minio.yaml")]):
        for profile in ([], ["--profile", "gpu"]):
            done = ds.run([*compose, "-f", str(COMPOSE_FILE), *extra, *profile, "config"], 60)
            assert done.returncode == 0, done.stderr
            services = yaml.safe_load(done.stdout)["services"]
            assert set(STACK) <= set(services)
            for name, service in services.items():
                for host_ip, _ in _published_ports(service):
                    assert host_ip == "127.0.0.1", f"{name} publishes a port beyond loopback"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # The pools the compose workers serve are the ones configs/team.yaml sends steps to.
    team = yaml.safe_load((REPO / "configs" / "team.yaml").read_text())["workers"]
    assert {gpu["environment"]["FRUGAL_POOL"], services["worker-cpu"]["environment"]["FRUGAL_POOL"]} == {
        team["finetune"],
        team["measure"],
    }


def _untracked() -> set[str]:
    """Untracked or ignored files in docker/, tests/ and at the top level (where a build or a
    compose run could leave some; the rest of the tree may be in another engineer's hands)."""
    pathspecs = ["docker", "tests", ":(glob)*"]
    done = ds.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all", "--", *pathspecs], 60, cwd=REPO)
    return {line[3:] for line in done.stdout.splitlines() if line[:2] in ("??", "!!")}


@dataclass
class Stack:
    compose: list[str]  # `docker compose -p <project> -f docker/compose.yaml`
    env: dict[str, str]
    prefect_api: str
    mlflow: str

    def __call__(self, *args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess[str]:
        return ds.run([*self.compose, *args], timeout, env=self.env, **kwargs)


@pytest.fixture(scope="module")
def stack(compose: list[str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Builds the images (cached layers make a rebuild seconds), starts the stack on free loopback
    ports, waits for both servers and the CPU worker's pool; removes it all afterwards."""
    ds.need_base_image()
    before = _untracked()
    timings: dict[str, float] = {}
    t = time.monotonic()
    built = ds.run([str(DOCKER_DIR / "build-images.sh")], 1800, env={**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("build"))})
    timings["build"] = time.monotonic() - t
    assert built.returncode == 0, ds.tail(built)

    project = f"frugaltest{os.getpid()}"
    ports = {"FRUGAL_PREFECT_PORT": ds.free_port(), "FRUGAL_MLFLOW_PORT": ds.free_port(), "FRUGAL_S3_PORT": ds.free_port()}
    env = {**os.environ, **{k: str(v) for k, v in ports.items()}}
    s = Stack(
        [*compose, "-p", project, "-f", str(COMPOSE_FILE)],
        env,
        f"http://127.0.0.1:{ports['FRUGAL_PREFECT_PORT']}/api",
        f"http://127.0.0.1:{ports['FRUGAL_MLFLOW_PORT']}",
    )
    try:
        t = time.monotonic()
        up = s("up", "-d", "--no-build", *STACK, timeout=420)
        assert up.returncode == 0, ds.tail(up)
        deadline = time.monotonic() + 180
        ds.wait_http(f"{s.prefect_api}/health", deadline)
        ds.wait_http(f"{s.mlflow}/health", deadline)
        ds.wait_http(f"http://127.0.0.1:{ports['FRUGAL_S3_PORT']}/_ministack/health", deadline)
        timings["up"] = time.monotonic() - t
        # The worker creates its pool once it is connected to the server.
        pools: list[str] = []
        while time.monotonic() < deadline and "frugal-cpu" not in pools:
            request = urllib.request.Request(f"{s.prefect_api}/work_pools/filter", data=b"{}", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as resp:
                pools = [p["name"] for p in json.load(resp)]
            time.sleep(1)
        assert "frugal-cpu" in pools, f"work pools: {pools}"
        yield s
    except BaseException:
        print(s("logs", "--no-color", "--tail", "60", timeout=120).stdout[-20000:])
        raise
    finally:
        t = time.monotonic()
        ds.remove_project(compose, project, env)
        timings["down"] = time.monotonic() - t
        print("team stack timings (s):", {k: round(v, 1) for k, v in timings.items()})
    leftovers = ds.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"], 60).stdout.split()
    assert not leftovers, f"containers left behind: {leftovers}"
    assert _untracked() <= before, "the test left files in the work tree"


@pytest.mark.docker
@pytest.mark.slow
def test_stack_runs_a_flow_on_the_cpu_worker(stack: Stack) -> None:
    worker = stack("ps", "-q", "worker-cpu").stdout.strip()
    check = ds.run(["docker", "exec", "-i", worker, "python", "-", RESULT_STORAGE], 360, input=IN_WORKER)
    assert "STACK-CHECK OK" in check.stdout, ds.tail(check)
    # The host reaches MLflow's API too (its Host header is allowed, not only /health's).
    with urllib.request.urlopen(f"{stack.mlflow}/api/2.0/mlflow/experiments/get-by-name?experiment_name=stack-check", timeout=10) as resp:
        assert json.load(resp)["experiment"]["name"] == "stack-check"


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "flows" / "deploy.py").exists(), reason="flows/deploy.py not present yet (frugal deploy / frugal worker)")
def test_smoke_pipeline_runs_on_the_workers(stack: Stack) -> None:
    """`frugal deploy`, then the smoke pipeline in workers mode with every remote step on the CPU
    pool, the parent flow in a one-off container of the worker image (so it addresses MLflow as the
    workers do) with a project folder of its own (so no file reaches a worker but through the
    stack)."""
    cpu_only = ["-s", "workers.finetune=frugal-cpu", "-s", "workers.heavy_steps=frugal-cpu", "-s", "workers.measure=frugal-cpu"]
    team = ["-c", "smoke", "-s", "execution=workers", "-s", f"result_storage={RESULT_STORAGE}", *cpu_only]
    t = time.monotonic()
    deployed = stack("run", "--rm", "--no-deps", "worker-cpu", "frugal", "deploy", *team, timeout=300)
    deploy_s = time.monotonic() - t
    assert deployed.returncode == 0, ds.tail(deployed)
    t = time.monotonic()
    ran = stack(
        "run", "--rm", "--no-deps", "-e", "FRUGAL_PROJECT_DIR=/tmp/parent", "worker-cpu", "frugal", "run", *team, timeout=900
    )  # fmt: skip
    run_s = time.monotonic() - t
    assert ran.returncode == 0, ds.tail(ran)
    assert "Champion:" in ran.stdout, ds.tail(ran)
    # The steps ran as flow runs of the stage deployments on the worker, and all completed.
    request = urllib.request.Request(f"{stack.prefect_api}/flow_runs/filter", data=b"{}", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        runs = json.load(resp)
    # (SCHEDULED ones are frugal-retrain's upcoming cron runs, which `frugal deploy` scheduled.)
    ran_on_pool = [r for r in runs if r.get("work_pool_name") == "frugal-cpu" and r["state_type"] != "SCHEDULED"]
    assert ran_on_pool, "no flow run went to the frugal-cpu pool"
    failed = [(r["name"], r["state_type"], r["state"]["message"]) for r in ran_on_pool if r["state_type"] != "COMPLETED"]
    assert not failed, failed
    print(f"smoke on the workers: deploy {deploy_s:.0f} s, run {run_s:.0f} s, {len(ran_on_pool)} step flow runs on frugal-cpu")


@pytest.mark.docker
@pytest.mark.slow
def test_gpu_worker_image_builds(tmp_path: Path) -> None:
    """The GPU image starts FROM a CUDA image on Docker Hub; it builds where that image is present."""
    base = os.environ.get("FRUGAL_GPU_BASE", GPU_BASE_IMAGE)
    if ds.run(["docker", "image", "inspect", base], 60).returncode != 0:
        pytest.skip(f"the GPU worker's base image {base} is not present (docker pull it where Docker Hub is reachable)")
    built = ds.run([str(DOCKER_DIR / "build-images.sh"), "worker-gpu"], 3600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert built.returncode == 0, ds.tail(built)
    probe = "import torch, frugal; print(torch.version.cuda)"
    done = ds.run(["docker", "run", "--rm", "frugal/worker-gpu:local", "python", "-c", probe], 300)
    assert done.returncode == 0 and done.stdout.strip() not in ("", "None"), ds.tail(done)


def _pins(text: str) -> dict[str, str]:
    """name -> version of each `name==version` line, names normalised as pip compares them."""
    lines = (line.split("#")[0].strip() for line in text.splitlines())
    pairs = (line.split("==") for line in lines if "==" in line)
    return {name.strip().lower().replace("_", "-"): version.strip() for name, version in pairs}


def test_serve_image_requirements_pin_the_locks_versions() -> None:
    """The common part and each format's runtime (docker/serve-runtime-<format>.txt) pin the lock's versions; the image
    for a format carries that format's runtime alone, and never the training stack."""
    serve, lock = _pins((DOCKER_DIR / "serve-requirements.txt").read_text()), _pins(LOCK.read_text())
    runtimes = {f.stem.removeprefix("serve-runtime-"): _pins(f.read_text()) for f in DOCKER_DIR.glob("serve-runtime-*.txt")}
    assert {"tokenizers", "fastapi", "uvicorn", "sqlalchemy", "alembic"} <= set(serve) and not {"onnxruntime", "openvino"} & set(serve)
    from frugal.runtime.registry import get_format

    assert set(runtimes) == {"onnx", "openvino", "causal-ort"}
    for name, pins in runtimes.items():  # what the format itself declares it needs to serve, beyond the common part
        assert set(pins) == {p.lower() for p in get_format(name).packages} - set(serve), name
    for pins in (serve, *runtimes.values()):
        assert {name: (version, lock.get(name)) for name, version in pins.items() if lock.get(name) != version} == {}
        assert not {"torch", "transformers", "mlflow"} & set(pins), "the serving image must stay without the training stack"


@pytest.fixture(scope="module")
def onnx_champion(prefect_server: None, project: Path) -> Path:
    """The project (conftest) whose registry holds a smoke run's champion: an ONNX model, the only variant (as in tests/test_serve.py)."""
    from flows.pipeline import run

    run(config="smoke", overrides=["compress.variants={onnx-int8: {method: onnx_int8}}", "finetune.epochs=2"], project_dir=str(project))
    return project


@pytest.mark.docker
@pytest.mark.slow
def test_serve_image_answers_predictions_without_torch(onnx_champion: Path, tmp_path: Path) -> None:
    """docker/build-serve.sh builds the image from models:/frugal-smoke@champion; in a container on a loopback port a key made
    with `frugal keys create` inside it gets the bundle's own predictions; torch is not importable and every package in the
    image has the lock's version."""
    import numpy as np
    from mlflow import MlflowClient

    from frugal.runtime import load_predictor

    ds.need_base_image()
    before = _untracked()
    registry = f"sqlite:///{onnx_champion / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry, "FRUGAL_SERVE_IMAGE": SERVE_IMAGE, "PYTHON": sys.executable}
    env["TMPDIR"] = str(tmp_path)  # the build context, outside the work tree
    t = time.monotonic()
    built = ds.run([str(DOCKER_DIR / "build-serve.sh"), "models:/frugal-smoke@champion"], 1800, env=env)
    build_s = time.monotonic() - t
    assert built.returncode == 0, ds.tail(built)
    size = int(ds.run(["docker", "image", "inspect", "--format", "{{.Size}}", SERVE_IMAGE], 60).stdout)
    assert size < 700e6, f"{size / 1e6:.0f} MB: something heavy (torch alone is ~750 MB installed) got into the image"

    name, port = f"frugal-serve-test-{os.getpid()}", ds.free_port()
    started = ds.run(["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8000", SERVE_IMAGE], 120)
    assert started.returncode == 0, ds.tail(started)
    try:
        ds.wait_http(f"http://127.0.0.1:{port}/readyz", time.monotonic() + 120)
        created = ds.run(["docker", "exec", name, "frugal", "keys", "create", "--name", "test", "--plan", "pro"], 120)
        assert created.returncode == 0, ds.tail(created)
        texts = ["driverless cars are great", "never getting in one", "the bus was late again", "ok"]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/predict", data=json.dumps({"texts": texts}).encode(),
            headers={"Authorization": f"Bearer {created.stdout.split()[-1]}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=30) as resp:
            predictions = json.load(resp)["predictions"]
        client = MlflowClient(registry, registry)
        version = client.get_model_version_by_alias("frugal-smoke", "champion").version
        bundle = Path(client.get_model_version_download_uri("frugal-smoke", version).removeprefix("file://"))
        predictor = load_predictor(bundle / "artifacts" / "model")
        got = np.array([[p["probabilities"][label] for label in predictor.labels] for p in predictions])
        np.testing.assert_allclose(got, predictor.predict_proba(texts), rtol=1e-4, atol=1e-5)
        assert [p["label"] for p in predictions] == predictor.predict(texts)

        probe = ds.run(["docker", "exec", name, "python", "-c", "import torch"], 60)
        assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr, ds.tail(probe)
        frozen = ds.run(["docker", "exec", name, "pip", "list", "--format=freeze"], 60)
        installed = {k: v for k, v in _pins(frozen.stdout).items() if k not in VENV_SEEDS}
        lock = _pins(LOCK.read_text())
        assert installed and {k: (v, lock.get(k)) for k, v in installed.items() if lock.get(k) != v} == {}
    except BaseException:
        print(ds.tail(ds.run(["docker", "logs", "--tail", "60", name], 60)))
        raise
    finally:
        ds.run(["docker", "rm", "-f", "-v", name], 120)
    assert _untracked() <= before, "the build left files in the work tree"
    print(f"serve image: built in {build_s:.0f} s, {size / 1e6:.0f} MB")
