"""Reuse, resume and honest run states, on the smoke config, with real processes and signals (local execution)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

# Small variants keep these runs short: one quick step, one training step.
VARIANTS = "compress.variants={int8: {method: dynamic_int8}, distill: {method: distill, layers: 1, epochs: 1}}"


@pytest.fixture(scope="module")
def first_run(prefect_server: None, project: Path):
    from flows.pipeline import run

    return run(config="smoke", overrides=[VARIANTS], project_dir=str(project))


def store(project: Path) -> MlflowClient:
    from tasks.plumbing.tracking import ensure_schema

    uri = f"sqlite:///{project / 'mlflow.db'}"
    ensure_schema(uri)  # waits while a pipeline process creates the schema
    return MlflowClient(uri)


def task_states(mlflow_run_id: str, project: Path) -> dict[str, list[str]]:
    """Prefect state names of the task runs of the flow run behind an MLflow parent run, by task name."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = store(project).get_run(mlflow_run_id).data.tags["frugal.prefect_flow_run"]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for task_run in runs:
        states.setdefault(task_run.name.rsplit("-", 1)[0], []).append(task_run.state.name)
    return states


def variant_runs(mlflow_run_id: str, project: Path) -> dict:
    mlc = store(project)
    experiment = mlc.get_run(mlflow_run_id).info.experiment_id
    found = mlc.search_runs([experiment], f"tags.mlflow.parentRunId = '{mlflow_run_id}' and tags.kind = 'variant'")
    return {r.data.tags["variant"]: r for r in found}


def test_a_rerun_reuses_every_completed_stage(first_run, project: Path) -> None:
    from flows.pipeline import run

    again = run(config="smoke", overrides=[VARIANTS], project_dir=str(project))
    states = task_states(again.run_id, project)
    assert states["finetune"] == ["Cached"]
    assert states["compress_step"] == ["Cached", "Cached"]
    assert states["measure"].count("Cached") == 3  # baseline, int8, distill (the incumbent champion is measured once more)
    before, after = variant_runs(first_run.run_id, project), variant_runs(again.run_id, project)
    f1 = {name: r.data.metrics["macro_f1"] for name, r in after.items()}
    assert f1 == {name: r.data.metrics["macro_f1"] for name, r in before.items()}
    assert after["baseline"].data.tags["model_uri"] == before["baseline"].data.tags["model_uri"]  # the same model, not a copy


def test_changing_only_the_variants_reuses_the_finetune_and_shared_prefixes(first_run, project: Path) -> None:
    from flows.pipeline import run

    distill = "{method: distill, layers: 1, epochs: 1}"
    chains = f"compress.variants={{a: [{distill}, {{method: dynamic_int8}}], b: [{distill}, {{method: onnx_int8}}]}}"
    result = run(config="smoke", overrides=[chains], project_dir=str(project))
    states = task_states(result.run_id, project)
    assert states["finetune"] == ["Cached"]
    # distill (made by the first run) is reused by both chains; only the two last steps are new.
    assert sorted(states["compress_step"]) == ["Cached", "Cached", "Completed", "Completed"]
    runs = variant_runs(result.run_id, project)
    assert runs["a"].data.tags["steps"].split(",")[:2] == runs["b"].data.tags["steps"].split(",")[:2]


def start_cli(project: Path, *overrides: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    args = [sys.executable, "-m", "frugal.cli", "run", "-c", "smoke", "--project-dir", str(project)]
    for item in overrides:
        args += ["-s", item]
    # A session of its own: the pipeline and the Prefect server it starts are signalled together.
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"the run ended before {what}:\n{proc.stderr.read()[-3000:]}"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"timed out waiting for {what}")


def running_step(project: Path, step: str) -> bool:
    if not (project / "mlflow.db").is_file():
        return False
    mlc = store(project)
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    return bool(experiments and mlc.search_runs(experiments, f"tags.step = '{step}' and attributes.status = 'RUNNING'"))


def all_runs(project: Path) -> list:
    mlc = store(project)
    return mlc.search_runs([e.experiment_id for e in mlc.search_experiments()], max_results=1000)


@pytest.mark.slow
def test_ctrl_c_during_a_variant_leaves_every_run_killed_or_failed(tmp_path: Path) -> None:
    slow = "compress.variants={distill: {method: distill, layers: 1, epochs: 30}}"
    proc = start_cli(tmp_path, slow, "finetune.epochs=1")
    wait_for(lambda: running_step(tmp_path, "distill"), "the distill step to start", proc)
    os.kill(proc.pid, signal.SIGINT)  # what Ctrl-C delivers to the pipeline (its temporary Prefect server keeps serving)
    try:
        assert proc.wait(timeout=120) != 0
    finally:
        stop(proc)
    runs = all_runs(tmp_path)
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    by_name = {r.info.run_name: r for r in runs}
    assert by_name["distill"].info.status == "KILLED" and by_name["finetune"].info.status == "FINISHED"
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"


def checkpoint_step(project: Path) -> int:
    import json

    found = list((project / ".frugal" / "checkpoints").glob("finetune-*/progress.json"))
    return json.loads(found[0].read_text())["step"] if found else 0


@pytest.mark.slow
def test_a_killed_finetune_resumes_and_reaches_the_uninterrupted_quality(prefect_server: None, tmp_path: Path) -> None:
    from flows.pipeline import run

    longer = ["finetune.epochs=12", "compress.variants={}"]
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    proc = start_cli(killed_dir, *longer)
    wait_for(lambda: checkpoint_step(killed_dir) >= 60, "a checkpoint at step 60", proc)
    os.killpg(proc.pid, signal.SIGKILL)  # no handler runs: the runs it had open stay RUNNING
    proc.wait(timeout=30)
    left_running = {r.info.run_id for r in all_runs(killed_dir) if r.info.status == "RUNNING"}
    assert left_running  # the parent and its finetune step

    started = time.perf_counter()
    resumed = run(config="smoke", overrides=longer, project_dir=str(killed_dir))
    resume_seconds = time.perf_counter() - started
    mlc = store(killed_dir)
    for run_id in left_running:  # closed at the start of the next run of the experiment, with the reason
        closed = mlc.get_run(run_id)
        assert closed.info.status == "FAILED" and "Abandoned" in closed.data.tags["error"]
    finetune_run = mlc.get_run(resumed.selection.baseline.run_id).data.tags["steps"]
    assert int(mlc.get_run(finetune_run).data.params["resumed_from_step"]) >= 60

    started = time.perf_counter()
    uninterrupted = run(config="smoke", overrides=longer, project_dir=str(clean_dir))
    full_seconds = time.perf_counter() - started
    print(f"resume after kill: {resume_seconds:.1f} s; uninterrupted run: {full_seconds:.1f} s")
    assert resumed.selection.baseline.metrics["macro_f1"] == uninterrupted.selection.baseline.metrics["macro_f1"]
    assert resumed.selection.baseline.metrics["accuracy"] == uninterrupted.selection.baseline.metrics["accuracy"]


@pytest.mark.slow
def test_two_runs_started_together_both_succeed_on_a_fresh_and_on_an_initialised_store(tmp_path: Path) -> None:
    quick = ("finetune.epochs=1", "compress.variants={}")
    for attempt in ("fresh", "initialised"):
        procs = [start_cli(tmp_path, *quick) for _ in range(2)]
        errors = [p.communicate(timeout=600)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], f"{attempt} store:\n" + "\n".join(e[-2000:] for e in errors)
    parents = [r for r in all_runs(tmp_path) if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 4 and all(r.info.status == "FINISHED" for r in parents)
    assert all(len(variant_runs(r.info.run_id, tmp_path)) == 1 for r in parents)  # each kept its baseline variant run
    promoted = [r for r in parents if r.data.tags.get("registry_decision") == "promoted"]
    assert len(promoted) == 1  # the first promotes; the others find an equal champion and keep it
