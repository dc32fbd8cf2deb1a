"""The whole pipeline on the smoke config, under a real (temporary) Prefect server, and its bad inputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import COST, QUALITY, RELATIVE

from frugal.errors import ConfigError, DataError, FrugalError, ModelError
from frugal.paths import ProjectPaths

METRICS = QUALITY | COST | RELATIVE


@pytest.fixture(scope="module")
def smoke_run(prefect_server: None, project: Path):
    from flows.pipeline import run

    return run(config="smoke", project_dir=str(project))


def client(project: Path):
    from frugal.config import load_config
    from tasks.plumbing import tracking

    return tracking.client(load_config("smoke"), ProjectPaths(project))


def test_smoke_pipeline_end_to_end(smoke_run, project: Path, tmp_path: Path) -> None:
    mlc = client(project)
    parent = mlc.get_run(smoke_run.run_id)
    assert parent.info.status == "FINISHED"
    assert {"git_commit", "git_dirty", "config_hash", "lock_hash", "data_hash"} <= set(parent.data.tags)
    assert parent.data.params["finetune.epochs"] == "6.0" and parent.data.params["model.source"] == "tiny"

    data_dvc = yaml.safe_load((project / "data.dvc").read_text())
    assert data_dvc["outs"][0]["md5"] == parent.data.tags["data_hash"] == smoke_run.data_hash

    children = mlc.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{smoke_run.run_id}' and tags.kind = 'variant'")
    variants = {r.data.tags["variant"]: r for r in children}
    assert all(r.info.status == "FINISHED" for r in children)
    assert set(variants) == {"baseline", "int8-dynamic", "onnx-int8", "prune", "int8", "distill-onnx-int8", "fp16"}
    assert variants["fp16"].data.tags["status"] == "skipped" and "float16" in variants["fp16"].data.tags["skip_reason"]
    for name, run in variants.items():
        if name != "fp16":
            assert METRICS <= set(run.data.metrics), f"{name} misses {METRICS - set(run.data.metrics)}"
    chain = variants["distill-onnx-int8"].data.tags["steps"].split(",")
    assert chain[0] == variants["baseline"].data.tags["steps"] and len(chain) == 3
    assert variants["distill-onnx-int8"].data.tags["model_uri"] == f"runs:/{chain[-1]}/model"
    assert "| fp16 | skipped: " in Path(mlc.download_artifacts(smoke_run.run_id, "comparison.md", str(tmp_path))).read_text()
    artifacts = {a.path for a in mlc.list_artifacts(smoke_run.run_id)}
    assert {"comparison.md", "pareto_frontier.png", "bundle", "validation", "data"} <= artifacts

    version = mlc.get_model_version_by_alias("frugal-smoke", "champion")
    assert version.tags["variant"] == parent.data.tags["champion_variant"]
    assert version.run_id == smoke_run.run_id


def test_parent_run_records_provenance(smoke_run, project: Path, tmp_path: Path) -> None:
    """What reproducing a run needs, read back from MLflow and checked against independent sources."""
    import json
    import os

    import torch

    from frugal.config import load_config, validate_config

    mlc = client(project)
    tags = mlc.get_run(smoke_run.run_id).data.tags
    assert tags["seed"] == "42" and tags["hw_cores"] == str(len(os.sched_getaffinity(0)))
    assert tags["hw_gpu"] == (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
    assert tags["data_pinned"] == "true"  # a fresh project: its first version becomes the pin
    record = json.loads(Path(mlc.download_artifacts(smoke_run.run_id, "provenance.json", str(tmp_path))).read_text())
    assert record["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0] and record["hardware"]["cpu"] == tags["hw_cpu"]
    assert record["seeds"]["threads"] == {"finetune": 2, "evaluate": 2}
    recorded = yaml.safe_load(Path(mlc.download_artifacts(smoke_run.run_id, "config.yaml", str(tmp_path))).read_text())
    assert validate_config(recorded) == load_config("smoke")


def test_served_champion_predicts(smoke_run, project: Path) -> None:
    import mlflow.pyfunc

    client(project)
    out = mlflow.pyfunc.load_model("models:/frugal-smoke@champion").predict(pd.DataFrame({"text": ["love it", "hate it"]}))
    assert len(out) == 2 and set(out["label"]) <= {"negative", "neutral", "positive"}


def test_another_experiment_reuses_the_baseline(smoke_run, project: Path, tmp_path: Path) -> None:
    """A config that extends smoke with another `name` and other variants is another experiment over the same data and
    fine-tune settings: its fine-tune and its shared step are cache hits (Prefect task state Cached), whichever run logged
    the data. Data enters cache keys by its content hash, never by where it was recorded."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    from flows.pipeline import run

    other = tmp_path / "other.yaml"
    other.write_text("extends: smoke\nname: smoke-other\ncompress:\n  variants:\n    int8: {method: dynamic_int8}\n")
    result = run(config=str(other), project_dir=str(project))
    with get_client(sync_client=True) as api:
        flow_run = api.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    states = {t.name.rsplit("-", 1)[0]: t.state.name for t in tasks}
    assert states["finetune"] == "Cached" and states["compress_step"] == "Cached"  # smoke's int8-dynamic is the same step
    mlc = client(project)
    experiment = mlc.get_run(result.run_id).info.experiment_id
    assert experiment != mlc.get_run(smoke_run.run_id).info.experiment_id
    assert not mlc.search_runs([experiment], "tags.step = 'finetune'")  # no fine-tune ran in the new experiment


def test_a_failing_method_does_not_stop_the_other_variants(smoke_run, project: Path) -> None:
    from flows.pipeline import run

    # A 5-layer student of the 2-layer smoke model raises: a real failure inside the method. (A chain whose formats do not
    # fit, the old example, is now refused by the plan before anything runs: tests/test_config.py.)
    variants = "{int8: {method: dynamic_int8}, broken: {method: distill, layers: 5, epochs: 1}, sparse: {method: sparsity}}"
    result = run(config="smoke", overrides=[f"compress.variants={variants}"], project_dir=str(project))
    mlc = client(project)
    query = f"tags.mlflow.parentRunId = '{result.run_id}' and tags.kind = 'variant'"
    children = mlc.search_runs([mlc.get_run(result.run_id).info.experiment_id], query)
    runs = {r.data.tags["variant"]: r for r in children}
    assert runs["broken"].info.status == "FAILED"
    assert "a 5-layer student cannot come from a 2-layer teacher" in runs["broken"].data.tags["error"]
    assert runs["int8"].info.status == runs["sparse"].info.status == "FINISHED"
    assert "usd_per_1m" in runs["int8"].data.metrics and "usd_per_1m" in runs["sparse"].data.metrics
    assert "| broken | failed: ValueError: a 5-layer student" in result.selection.table_md


def write_csv(path: Path, rows: dict) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


BAD_INPUTS = {
    "missing data file": (["data.source=file", "data.path=/no/such/file.csv"], DataError, "does not exist"),
    "empty file": (["data.source=file", "data.path={tmp}/empty.csv"], DataError, "is empty"),
    "no label column": (["data.source=file", "data.path={tmp}/nolabel.csv"], DataError, "no column 'sentiment'"),
    "labels outside the set": (["data.source=file", "data.path={tmp}/badlabels.csv"], DataError, "label outside data.labels"),
    "every row invalid": (["data.source=file", "data.path={tmp}/blank.csv"], DataError, "Every row was removed"),
    "model path missing": (["model.source=path", "model.name_or_path=/no/such/model"], ModelError, "does not exist"),
    "unknown config key": (["finetune.epochz=1"], ConfigError, "unknown config key 'finetune.epochz'"),
    "data dir outside the project": (["data.dir=../../elsewhere"], ConfigError, "must be a path relative to the project folder"),
    "unknown DVC remote": (["data.remote=nowhere"], DataError, "could not be pushed to the DVC remote 'nowhere'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_cleanly_and_leaves_no_trace(case: str, smoke_run, project: Path, tmp_path: Path) -> None:
    from flows.pipeline import run

    (tmp_path / "empty.csv").write_text("")
    write_csv(tmp_path / "nolabel.csv", {"text": ["a", "b"]})
    write_csv(tmp_path / "badlabels.csv", {"text": [f"t{i}" for i in range(20)], "sentiment": ["good", "bad"] * 10})
    write_csv(tmp_path / "blank.csv", {"text": [" ", "  "], "sentiment": ["positive", "negative"]})
    overrides, error, message = BAD_INPUTS[case]
    mlc = client(project)
    champion_before = mlc.get_model_version_by_alias("frugal-smoke", "champion").version
    versions_before = len(mlc.search_model_versions("name='frugal-smoke'"))
    data_dvc_before = (project / "data.dvc").read_text()

    with pytest.raises(error, match=message) as err:
        run(config="smoke", overrides=[o.format(tmp=tmp_path) for o in overrides], project_dir=str(project))
    assert err.value.fix  # every user error says how to fix it

    experiment = mlc.get_experiment_by_name("smoke")
    latest = mlc.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED" and message in latest.data.tags["error"]
    assert mlc.get_model_version_by_alias("frugal-smoke", "champion").version == champion_before
    assert len(mlc.search_model_versions("name='frugal-smoke'")) == versions_before
    assert (project / "data.dvc").read_text() == data_dvc_before


def test_cli_prints_one_clear_line_for_a_user_error(tmp_path: Path) -> None:
    """The CLI rejects a bad config before starting Prefect, and still leaves the FAILED run a scheduled run's owner looks for."""
    import os
    import subprocess
    import sys

    from mlflow import MlflowClient

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "frugal.cli", "run", "-c", "smoke", "-s", "data.bogus=1", "--project-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("frugal: error: Invalid config: unknown config key 'data.bogus'")
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3
    mlc = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = mlc.search_runs([mlc.get_experiment_by_name("smoke").experiment_id])
    assert run.info.status == "FAILED" and "data.bogus" in run.data.tags["error"]
    assert run.data.params["overrides"] == '["data.bogus=1"]'


def test_frugal_error_is_the_base_of_user_errors() -> None:
    assert issubclass(DataError, FrugalError) and issubclass(ModelError, FrugalError) and issubclass(ConfigError, FrugalError)


@pytest.mark.slow
def test_mlflow_models_serve_answers_over_http(smoke_run, project: Path) -> None:
    """The registered champion serves with `mlflow models serve`, as the README says."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    mlflow_cli = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/frugal-smoke@champion", "--env-manager", "local"]
    server = subprocess.Popen([*mlflow_cli, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(1)
        body = json.dumps({"inputs": {"text": ["driverless cars are great", "never getting in one"]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        predictions = json.loads(urllib.request.urlopen(request, timeout=30).read())["predictions"]
        assert len(predictions) == 2 and {p["label"] for p in predictions} <= {"negative", "neutral", "positive"}
    finally:
        server.terminate()
        server.wait(timeout=30)
