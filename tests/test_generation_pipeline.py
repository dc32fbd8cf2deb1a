"""task generate end to end through the CLI on the tiny config, and the pipeline's bad inputs for generation."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from gen_helpers import tiny_llama, write_gguf, write_tokenizer

from frugal.config import load_config
from frugal.errors import ConfigError, DataError, ModelError
from frugal.paths import ProjectPaths

VARIANTS = {"baseline", "ort-int8", "ort-int4", "drop-one", "speculative", "cascade"}
MEASURED = {"rouge_l", "usd_per_1m_tokens", "usd_per_1m_prompt_tokens", "tokens_per_s", "ttft_p50_ms", "peak_rss_mb", "model_size_mb"}


def cli(*args: str, project: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    command = [sys.executable, "-m", "frugal.cli", *args, "--project-dir", str(project)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def generate_run(prefect_server: None, project: Path) -> subprocess.CompletedProcess:
    return cli("run", "-c", "generate-smoke", project=project)


def client(project: Path):
    from tasks.plumbing import tracking

    return tracking.client(load_config("generate-smoke"), ProjectPaths(project))


def test_the_generative_pipeline_runs_end_to_end_through_the_cli(generate_run, project: Path) -> None:
    assert generate_run.returncode == 0, generate_run.stderr[-3000:]
    mlc = client(project)
    parent = mlc.get_run(re.search(r"MLflow parent run (\w+)", generate_run.stdout).group(1))
    assert parent.info.status == "FINISHED" and parent.data.params["task"] == "generate"
    children = mlc.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.kind = 'variant'")
    variants = {r.data.tags["variant"]: r for r in children}
    assert VARIANTS <= set(variants) and {n for n in variants if n.startswith("search-")}  # the hand-written ones and the searched
    for name, run in variants.items():
        if run.data.tags["status"] == "ok":
            assert MEASURED <= set(run.data.metrics), f"{name} misses {MEASURED - set(run.data.metrics)}"
    assert variants["ort-int4"].data.metrics["model_size_mb"] < variants["baseline"].data.metrics["model_size_mb"]
    version = mlc.get_model_version_by_alias("frugal-generate-smoke", "champion")
    assert version.tags["variant"] == parent.data.tags["champion_variant"]
    assert "| rouge_l |" in generate_run.stdout or "rouge_l" in generate_run.stdout
    data_dvc = yaml.safe_load((project / "generate-data.dvc").read_text()) if (project / "generate-data.dvc").is_file() else None
    assert data_dvc is None or data_dvc["outs"][0]["md5"] == parent.data.tags["data_hash"]


def test_the_search_prices_every_shape_and_builds_the_anchor_first(generate_run, project: Path) -> None:
    """generate-smoke's search: depths {1, 2} (the tiny model's own) x {int8, int4}, priced untrained on a `search` step run;
    a full-depth shape is built and checked on val before any cut one trains; search.md sets predicted against measured."""
    mlc = client(project)
    parent = re.search(r"MLflow parent run (\w+)", generate_run.stdout).group(1)
    experiment = mlc.get_run(parent).info.experiment_id
    step = mlc.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent}' and tags.step = 'search'")[0]
    shapes = {f"search-{n}L-{p}" for n in (1, 2) for p in ("int8", "int4")}
    assert {k.removeprefix("predicted_usd_per_1m_tokens.") for k in step.data.metrics if k.startswith("predicted_")} == shapes
    where = f"tags.mlflow.parentRunId = '{parent}' and tags.kind = 'variant'"
    runs = mlc.search_runs([experiment], where, order_by=["attributes.start_time ASC"])
    built = [r.data.tags["variant"] for r in runs if r.data.tags["variant"] in shapes]
    assert built and built[0].startswith("search-2L-")  # the anchor: a shape that trains nothing comes first
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in Path(mlc.download_artifacts(parent, "search.md", str(project / "dl"))).read_text().splitlines()
    }
    assert shapes <= set(rows) and all("not built" not in rows[name] for name in built)


def test_compare_shows_the_generative_metrics(generate_run, project: Path) -> None:
    shown = cli("compare", "-c", "generate-smoke", project=project)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "rouge_l" in shown.stdout and "usd_per_1m_tokens" in shown.stdout


def test_reproduce_gives_the_same_answers_scores(generate_run, project: Path) -> None:
    original = re.search(r"MLflow parent run (\w+)", generate_run.stdout).group(1)
    again = cli("reproduce", original, project=project)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Quality metrics match exactly" in again.stdout and "| baseline | rouge_l |" in again.stdout
    assert "| baseline | usd_per_1m_tokens |" in again.stdout


def chatless_model(folder: Path) -> Path:
    """A transformers folder (model + tokenizer) whose tokenizer has no chat template."""
    write_tokenizer(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    from tokenizers import Tokenizer

    tiny_llama(Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()).save_pretrained(folder)
    return folder


BAD_INPUTS = {
    "response column missing": (["data.source=file", "data.path={tmp}/pairs.csv"], DataError, "no column 'response'"),
    "prompt over the context": (["generate.max_prompt_tokens=250"], ConfigError, "over the model's context"),
    "chat without a chat template": (["model.source=path", "model.name_or_path={tmp}/chatless"], ModelError, "no chat template"),
    "GGUF transformers cannot load": (["model.source=path", "model.name_or_path={tmp}/odd.gguf"], ModelError, "'rwkv7'"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_message_and_leaves_no_trace(case: str, generate_run, project: Path, tmp_path: Path) -> None:
    from flows.pipeline import run

    pd.DataFrame({"prompt": ["a", "b"], "reply": ["x", "y"]}).to_csv(tmp_path / "pairs.csv", index=False)
    chatless_model(tmp_path / "chatless")
    write_gguf(tmp_path / "odd.gguf", "rwkv7")
    overrides, error, message = BAD_INPUTS[case]
    mlc = client(project)
    champion_before = mlc.get_model_version_by_alias("frugal-generate-smoke", "champion").version
    versions_before = len(mlc.search_model_versions("name='frugal-generate-smoke'"))
    pointers_before = {p.name: p.read_text() for p in project.glob("*.dvc") if p.is_file()}

    with pytest.raises(error, match=message) as err:
        run(config="generate-smoke", overrides=[o.format(tmp=tmp_path) for o in overrides], project_dir=str(project))
    assert err.value.fix

    experiment = mlc.get_experiment_by_name("generate-smoke")
    latest = mlc.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED" and message in latest.data.tags["error"]
    assert not mlc.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert mlc.get_model_version_by_alias("frugal-generate-smoke", "champion").version == champion_before
    assert len(mlc.search_model_versions("name='frugal-generate-smoke'")) == versions_before
    assert {p.name: p.read_text() for p in project.glob("*.dvc") if p.is_file()} == pointers_before
