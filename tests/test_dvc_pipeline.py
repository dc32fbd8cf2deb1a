"""dvc.yaml: DVC reads the pipeline and its per-stage params, and `dvc repro` / `dvc exp run -S` rerun only what changed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frugal.config import load_config
from frugal.paths import ROOT

STAGES = {"data": {"seed", "data", "validation"},
          "finetune": {"model", "finetune", "annotation.features", "annotation.c", "annotation.noise"},  # + the label_noise stage
          "compress": {"compress"}, "evaluate": {"evaluate", "select"}}  # fmt: skip


def dvc_sync():  # noqa: ANN201 - the module tools/dvc_sync.py
    spec = importlib.util.spec_from_file_location("dvc_sync", ROOT / "tools" / "dvc_sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_params_yaml_agrees_with_the_default_config() -> None:
    assert load_config(ROOT / "params.yaml").model_dump() == load_config("default").model_dump()
    assert (ROOT / "params.yaml").read_text() == dvc_sync().params_yaml()  # generated, never a hand copy


def test_each_stage_depends_on_exactly_the_code_it_runs() -> None:
    """dvc.yaml is what tools/dvc_sync.py writes: each stage's code deps are the import closure of the stages it runs,
    the computation behind the cache keys, so an edit to the runtime or a helper reruns the stages that use it."""
    from frugal.codegraph import files

    assert (ROOT / "dvc.yaml").read_text() == dvc_sync().dvc_yaml()
    deps = {name: set(stage["deps"]) for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}
    assert {"frugal/runtime/predictor.py", "frugal/runtime/manifest.py", "frugal/runtime/formats/cascade.py",
            "frugal/measure.py"} <= deps["evaluate"]  # fmt: skip
    assert "ml/compress/onnx.py" in deps["compress"] and "ml/compress/onnx.py" not in deps["finetune"]
    assert {p.as_posix() for p in files(["tasks.finetune"])} <= deps["finetune"]


def test_dvc_reads_every_stage_and_its_params() -> None:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        stages = {s.name: s for s in repo.index.stages if getattr(s, "name", None) in STAGES}
        assert set(stages) == set(STAGES)
        for name, stage in stages.items():
            (params,) = [d for d in stage.deps if d.def_path == "params.yaml"]
            assert set(params.params) == STAGES[name]
            assert set(params.get_hash().value) == STAGES[name]  # every tracked key is in params.yaml


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_API"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `frugal` the stages call
    return env


def dvc(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_repro_then_an_experiment_reruns_only_the_stages_downstream_of_the_change(tmp_path: Path) -> None:
    """A git copy of the repo: a smoke run leaves it clean; then, with smoke-sized params, the DVC user's loop end to end."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True)
    for name in files.stdout.split():
        if (ROOT / name).is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, repo / name)
    params = load_config("smoke", ["compress.variants={int8: {method: dynamic_int8}}", "finetune.epochs=2"]).model_dump(mode="json")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".dvc" / "config").write_text(f"[core]\n    remote = r\n['remote \"r\"']\n    url = {tmp_path / 'remote'}\n")
    for git in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(["git", *git], cwd=repo, check=True)

    # A smoke run in a git project leaves its work tree clean: its data version differs from data.dvc's and is kept by hash.
    frugal = subprocess.run([sys.executable, "-m", "frugal.cli", "run", "-c", "smoke", "--project-dir", str(repo)], cwd=repo,
                            env=clean_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert frugal.returncode == 0, frugal.stderr[-3000:]
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""

    first = dvc("repro", cwd=repo)
    assert all(f"Running stage '{s}'" in first for s in STAGES)
    metrics = json.loads((repo / "reports" / "dvc" / "metrics.json").read_text())
    assert metrics["champion"] in metrics["variants"] and set(metrics["variants"]) == {"baseline", "int8"}

    again = dvc("exp", "run", "-S", "finetune.epochs=1", cwd=repo)
    assert "Stage 'data' didn't change, skipping" in again
    assert all(f"Running stage '{s}'" in again for s in ("finetune", "compress", "evaluate"))
    assert yaml.safe_load((repo / "params.yaml").read_text())["finetune"]["epochs"] == 1
    rerun = json.loads((repo / "reports" / "dvc" / "metrics.json").read_text())
    assert rerun["run_id"] != metrics["run_id"] and rerun["data_hash"] == metrics["data_hash"]
