"""`execution: workers` for real: a Prefect server, two process work pools and a worker each, all on loopback.

The "GPU" pool's worker is an ordinary CPU process here (no GPU on CI); what is tested is
where each step runs, what Prefect and MLflow record, and what happens when a worker dies.
Each worker has its own project folder, as it would on its own machine.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
VARIANTS = "compress.variants={int8: {method: dynamic_int8}, distill: {method: distill, layers: 1, epochs: 1}}"
WORKERS = ["execution=workers", "workers.finetune=test-gpu", "workers.heavy_steps=test-gpu", "workers.measure=test-cpu",
           "workers.pipeline=test-cpu"]  # fmt: skip


def flags(overrides: list[str]) -> list[str]:
    """`-s KEY=VALUE` for each override, as the CLI takes them."""
    return [a for item in overrides for a in ("-s", item)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    # A session of its own, so stop() ends the process and everything it started.
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        found += children.get(todo.pop(), [])
        todo += children.get(found[-1], []) if found else []
    return found


class Stack:
    def __init__(self, root: Path) -> None:
        self.root, self.procs, self.workers = root, [], {}
        self.url = f"http://127.0.0.1:{free_port()}/api"
        home = root / "prefect-home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
        self.env |= {"PREFECT_HOME": str(home), "PREFECT_API_URL": self.url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def serve(self) -> None:
        port = self.url.split(":")[2].split("/")[0]
        server = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", port]
        self.procs.append(start(server, self.env, self.root / "server.log"))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return
            except OSError:
                time.sleep(1)
        pytest.fail("the Prefect server did not start:\n" + (self.root / "server.log").read_text()[-3000:])

    def frugal(self, *args: str, project: Path | None = None) -> subprocess.CompletedProcess:
        env = self.env | ({"FRUGAL_PROJECT_DIR": str(project)} if project else {})
        return subprocess.run([sys.executable, "-m", "frugal.cli", *args], env=env, capture_output=True, text=True, timeout=300)

    def worker(self, pool: str) -> subprocess.Popen:
        env = self.env | {"FRUGAL_PROJECT_DIR": str(self.root / f"worker-{pool}")}
        proc = start([sys.executable, "-m", "frugal.cli", "worker", "--pool", pool], env, self.root / f"worker-{pool}.log")
        self.procs.append(proc)
        self.workers[pool] = proc
        return proc

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("workers"))
    try:
        stack.serve()
        deployed = stack.frugal("deploy", "-c", "smoke", "--project-dir", str(stack.root / "parent"), *flags(WORKERS))
        assert deployed.returncode == 0, deployed.stderr[-3000:]
        assert "global concurrency limit frugal-measure: 1 slot" in deployed.stdout  # one measurement at a time on the pools
        for pool in ("test-gpu", "test-cpu"):
            stack.worker(pool)
        yield stack
    finally:
        stack.close()


@pytest.fixture
def api(stack: Stack) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: stack.url}):
        yield


def runs_by_name(project: Path, parent_run_id: str) -> dict[str, tuple[str, list[str]]]:
    mlc = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = mlc.get_run(parent_run_id).info.experiment_id
    found = mlc.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.info.run_name: (r.info.status, sorted(r.data.metrics)) for r in found}


def flow_runs_on(pool: str) -> dict[str, list[str]]:
    """State names of the flow runs a pool's worker ran, by flow name."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        found: dict[str, list[str]] = {}
        for r in client.read_flow_runs(limit=200):
            if r.work_pool_name == pool and r.state.name != "Scheduled":
                found.setdefault(names[r.flow_id], []).append(r.state.name)
        return found


def test_heavy_steps_run_on_the_gpu_pool_and_mlflow_records_the_same_as_local(stack: Stack, api: None) -> None:
    from test_orchestration import task_states

    from flows.pipeline import run

    parent, local = stack.root / "parent", stack.root / "local"
    remote = run(config="smoke", overrides=[VARIANTS, *WORKERS], project_dir=str(parent))
    # The fine-tune and the (heavy) distill step ran on the GPU pool; every measurement on the CPU pool.
    assert flow_runs_on("test-gpu") == {"frugal-finetune": ["Completed"], "frugal-compress-step": ["Completed"]}
    assert flow_runs_on("test-cpu") == {"frugal-measure": ["Completed"] * 3}  # baseline, int8, distill
    in_parent = task_states(remote.run_id, parent)
    assert in_parent["compress_step"] == ["Completed"]  # int8 is a light step: it stayed in the parent flow
    assert "finetune" not in in_parent and "measure" not in in_parent

    here = run(config="smoke", overrides=[VARIANTS], project_dir=str(local))
    assert runs_by_name(parent, remote.run_id) == runs_by_name(local, here.run_id)
    assert remote.selection.table_md.count("\n") == here.selection.table_md.count("\n")


def test_deploy_schedules_the_retraining_flow_with_the_configured_cron(stack: Stack, api: None) -> None:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("frugal-retrain/smoke")
        assert client.read_global_concurrency_limit_by_name("frugal-measure").limit == 1
        for _ in range(60):  # the scheduler service runs every few seconds
            upcoming = client.read_flow_runs(limit=50)
            scheduled = [r for r in upcoming if r.deployment_id == deployment.id and r.state.name == "Scheduled"]
            if scheduled:
                break
            time.sleep(1)
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * 1"]  # from configs/default.yaml
    # The server's scheduler made the runs (with SQLAlchemy 2.1 it silently makes none): Mondays at 03:00 UTC.
    assert scheduled and all(r.expected_start_time.weekday() == 0 and r.expected_start_time.hour == 3 for r in scheduled)


def checkpoint_step(project: Path) -> int:
    import json

    found = list((project / ".frugal" / "checkpoints").glob("finetune-*/progress.json"))
    return json.loads(found[0].read_text())["step"] if found else 0


def test_a_killed_gpu_worker_hands_the_step_to_another_worker_which_resumes_it(stack: Stack, api: None) -> None:
    """The machine running fine-tuning dies mid-step; another worker of the pool takes the step again (workers.crash_retries)
    and resumes from the checkpoint; the dead step's MLflow runs are closed; the result equals an uninterrupted run's."""
    from datetime import UTC, datetime

    from prefect import get_client

    from flows.pipeline import run

    project, longer = stack.root / "killed", ["finetune.epochs=12", "compress.variants={}", *WORKERS]
    args = ["run", "-c", "smoke", "--project-dir", str(project)] + flags(longer)
    since = datetime.now(UTC)  # the module's other tests ran flow runs on test-gpu too
    pipeline = start([sys.executable, "-m", "frugal.cli", *args], stack.env, stack.root / "killed.log")
    stack.procs.append(pipeline)
    worker_dir = stack.root / "worker-test-gpu"
    deadline = time.time() + 300
    while checkpoint_step(worker_dir) < 60:
        assert time.time() < deadline and pipeline.poll() is None, (stack.root / "killed.log").read_text()[-3000:]
        time.sleep(0.5)
    worker = stack.workers["test-gpu"]
    for pid in [worker.pid, *descendants(worker.pid)]:  # the machine dies: the worker and the flow run it started
        os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    stack.worker("test-gpu")  # another machine of the pool (here: the same project folder, as a shared volume would be)
    assert pipeline.wait(timeout=600) == 0, (stack.root / "killed.log").read_text()[-3000:]
    print(f"the step went to the other worker and the run finished {time.monotonic() - killed_at:.0f} s after the kill")

    mlc = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    failed = [r for r in mlc.search_runs([e.experiment_id for e in mlc.search_experiments()]) if r.info.status != "FINISHED"]
    assert failed and all(r.info.status == "FAILED" for r in failed), [(r.info.run_name, r.info.status) for r in failed]
    with get_client(sync_client=True) as client:
        finetunes = [r.state.name for r in client.read_flow_runs(limit=200) if r.work_pool_name == "test-gpu" and r.created >= since]
    assert sorted(finetunes) == ["Completed", "Crashed"], finetunes
    rerun = run(config="smoke", overrides=longer, project_dir=str(project))  # every stage reused
    finetune_run = mlc.get_run(rerun.selection.baseline.run_id).data.tags["steps"]
    assert int(mlc.get_run(finetune_run).data.params["resumed_from_step"]) >= 60
    clean = run(config="smoke", overrides=longer, project_dir=str(stack.root / "uninterrupted"))
    assert rerun.selection.baseline.metrics["macro_f1"] == clean.selection.baseline.metrics["macro_f1"]


def parent_runs(project: Path) -> dict[str, str]:
    """Run id -> registry decision of every pipeline (parent) run in the project's MLflow store."""
    if not (project / "mlflow.db").exists():
        return {}
    mlc = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    found = mlc.search_runs([e.experiment_id for e in mlc.search_experiments()], max_results=1000)
    return {r.info.run_id: r.data.tags.get("registry_decision", "") for r in found if "mlflow.parentRunId" not in r.data.tags}


def retrain_together(stack: Stack, project: Path, epochs: int, count: int) -> list[str]:
    """Start `count` retrain flow runs on the deployment at once; return their registry decisions."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    before = parent_runs(project)
    overrides = [f"finetune.epochs={epochs}", "compress.variants={}", *WORKERS]
    params = {"config": "smoke", "overrides": overrides, "project_dir": str(project)}
    started = [run_deployment("frugal-retrain/smoke", parameters=params, timeout=0) for _ in range(count)]
    deadline = time.time() + 600
    with get_client(sync_client=True) as client:
        for flow_run in started:
            while not (state := client.read_flow_run(flow_run.id).state).is_final():
                assert time.time() < deadline, f"retrain flow run {flow_run.id} still {state.name} after 10 min"
                time.sleep(1)
            assert state.is_completed(), state.message
    return sorted(decision for run_id, decision in parent_runs(project).items() if run_id not in before)


def test_retraining_promotes_a_better_challenger_once_and_keeps_the_champion_against_a_worse_one(stack: Stack, api: None) -> None:
    project = stack.root / "retrain"
    assert retrain_together(stack, project, epochs=1, count=1) == ["promoted"]  # no champion yet
    weak = champion(project)
    assert retrain_together(stack, project, epochs=6, count=2) == ["kept", "promoted"]  # better: promoted once, not twice
    strong = champion(project)
    assert strong.version != weak.version and float(strong.tags["macro_f1"]) > float(weak.tags["macro_f1"])
    assert retrain_together(stack, project, epochs=1, count=1) == ["kept"]  # worse: the alias stays
    assert champion(project).version == strong.version


def champion(project: Path):
    # registry_uri too: without it MlflowClient reads the registry this process last set globally (another project's).
    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("frugal-smoke", "champion")


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        ("test-idle", "no worker of pool test-idle picked up frugal-measure"),  # deployed, but no worker serves the pool
        ("test-nowhere", "the Prefect API has no deployment frugal-measure/test-nowhere"),  # never deployed
    ],
)
def test_a_step_no_worker_can_take_fails_the_run_with_one_message(stack: Stack, api: None, pool: str, expected: str) -> None:
    from prefect import get_client

    project = stack.root / "parent"  # the fine-tune is cached there by the first test
    placed = [*WORKERS, f"workers.measure={pool}", "workers.start_timeout_seconds=20", "compress.variants={}"]
    if pool == "test-idle":
        deployed = stack.frugal("deploy", "-c", "smoke", *flags(placed), project=project)
        assert deployed.returncode == 0, deployed.stderr[-3000:]
    proc = stack.frugal("run", "-c", "smoke", "--project-dir", str(project), *flags(placed))
    assert proc.returncode == 2 and expected in proc.stderr and "Fix:" in proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    mlc = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    assert not mlc.search_runs([e.experiment_id for e in mlc.search_experiments()], "attributes.status = 'RUNNING'")
    if pool == "test-idle":  # the waiting flow run is cancelled, so a worker started later does not run it for nobody
        with get_client(sync_client=True) as client:
            states = [r.state.name for r in client.read_flow_runs(limit=200) if r.work_pool_name == "test-idle"]
        assert states == ["Cancelled"]
