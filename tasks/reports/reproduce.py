"""`frugal reproduce RUN_ID`: rerun a recorded pipeline run from its data version and config, and diff the metrics.

Quality metrics must match exactly (CPU, same seeds and thread counts: tasks/provenance.py lists them); cost
metrics depend on the machine, so they are compared as ratios with both machines named.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from frugal.config import RunConfig, validate_config
from frugal.errors import ConfigError, FrugalError
from tasks.plumbing import tracking
from tasks.plumbing.provenance import CONFIG_ARTIFACT

if TYPE_CHECKING:
    from mlflow import MlflowClient

COST = (
    "usd_per_1m",
    "latency_p50_ms",
    "latency_p95_ms",
    "throughput_per_s",
    "peak_rss_mb",
    "model_size_mb",
    "params_m",
    "usd_per_1m_tokens",
    "usd_per_1m_prompt_tokens",
    "tokens_per_s",
    "ttft_p50_ms",
)  # the last four: task generate
GENERATIVE_QUALITY = ("rouge_l", "exact_match", "field_f1")  # greedy decoding on the CPU: the same answers, so the same scores


class ReproduceError(FrugalError):
    """A run cannot be reproduced: unknown, without a data version, or with a config this code no longer reads."""


@dataclass
class Recorded:
    """A pipeline run as MLflow holds it: what reproducing it needs, and the metrics to compare with."""

    run_id: str
    data_hash: str
    config: dict[str, Any]
    commit: str
    dirty: bool
    machine: str
    variants: dict[str, dict[str, float]] = field(default_factory=dict)
    winners: dict[str, dict[int, str]] = field(default_factory=dict)  # variant -> chain step index -> the candidate a race kept
    searched: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # variant a search built -> its chain's step configs


def is_quality(metric: str) -> bool:
    return metric in ("accuracy", "macro_f1", *GENERATIVE_QUALITY) or (metric.startswith("f1_") and metric != "f1_retained")


def parent_of(mlc: MlflowClient, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        run = mlc.get_run(run_id)
    except MlflowException:
        raise ReproduceError(f"No MLflow run {run_id!r} in the store {mlc.tracking_uri}.",
                             "Give a parent run id from `frugal compare` or the MLflow UI (and the same --project-dir "
                             "or MLFLOW_TRACKING_URI as the run).") from None  # fmt: skip
    parent = run.data.tags.get("mlflow.parentRunId")
    return mlc.get_run(parent) if parent else run


def recorded(mlc: MlflowClient, run_id: str) -> Recorded:
    run = parent_of(mlc, run_id)
    tags, rid = run.data.tags, run.info.run_id
    if not tags.get("data_hash") or tags.get("data_hash", "").startswith("fixture"):
        raise ReproduceError(f"Run {rid} recorded no data version (it stopped before its data was versioned).",
                             "Reproduce a run that got past data validation.")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        try:
            config = yaml.safe_load(Path(mlc.download_artifacts(rid, CONFIG_ARTIFACT, tmp)).read_text())
        except Exception:  # MLflow raises several types for a missing artifact
            raise ReproduceError(f"Run {rid} has no {CONFIG_ARTIFACT} artifact (it predates provenance records).",
                                 "Rerun its config with `frugal run`; later runs can be reproduced.") from None  # fmt: skip
    machine = f"{tags.get('hw_cpu', 'unknown CPU')}, {tags.get('hw_cores', '?')} cores, GPU {tags.get('hw_gpu', 'none')}"
    return Recorded(rid, tags["data_hash"], config, tags.get("git_commit", "unknown"), tags.get("git_dirty") == "true", machine,
                    variant_metrics(mlc, run), race_winners(mlc, run), searched_chains(mlc, run))  # fmt: skip


def variant_metrics(mlc: MlflowClient, parent: Any) -> dict[str, dict[str, float]]:
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.kind = 'variant'"
    runs = mlc.search_runs([parent.info.experiment_id], query, max_results=1000)
    return {r.data.tags["variant"]: dict(r.data.metrics) for r in runs}


def race_winners(mlc: MlflowClient, parent: Any) -> dict[str, dict[int, str]]:
    """Per variant, the candidate each raced step kept (its step run's `winner` param; tag `steps` lists the chain's runs)."""
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.kind = 'variant'"
    winners: dict[str, dict[int, str]] = {}
    for variant in mlc.search_runs([parent.info.experiment_id], query, max_results=1000):
        steps = [r for r in variant.data.tags.get("steps", "").split(",") if r][1:]  # the first is the fine-tune
        for index, step_run in enumerate(steps):
            params = mlc.get_run(step_run).data.params
            if params.get("raced") == "True" and "winner" in params:
                winners.setdefault(variant.data.tags["variant"], {})[index] = params["winner"]
    return winners


def searched_chains(mlc: MlflowClient, parent: Any) -> dict[str, list[dict[str, Any]]]:
    """Per variant the search built (`search-*`), its chain read back from its step runs' options (`option.*` params)."""
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.kind = 'variant' and tags.variant LIKE 'search-%'"
    chains = {}
    for variant in mlc.search_runs([parent.info.experiment_id], query, max_results=1000):
        steps = [mlc.get_run(r).data.params for r in variant.data.tags.get("steps", "").split(",")[1:] if r]
        chains[variant.data.tags["variant"]] = [
            {"method": p["method"], **{k.removeprefix("option."): _param(v) for k, v in p.items() if k.startswith("option.")}}
            for p in steps
        ]
    return {name: chain for name, chain in chains.items() if chain}


def _param(text: str) -> Any:
    """An option as logged (str() of the value: a number, None, a bool, a list or dict repr, or a plain string) back to its value."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def pinned(variants: dict[str, Any], winners: dict[str, dict[int, str]]) -> dict[str, Any]:
    """The config's variants with each raced step set to build the candidate the original kept (no race: the same graph)."""
    out = dict(variants)
    for name, by_step in winners.items():
        steps = out.get(name)
        if isinstance(steps, list):
            out[name] = [{**step, "pick": by_step[i]} if i in by_step else step for i, step in enumerate(steps)]
    return out


def rerun_config(original: Recorded) -> RunConfig:
    """The original's resolved config, reading its recorded data version, never re-pinning data.dvc, building each raced
    step's recorded winner instead of racing again (a race on another machine, or another moment, can keep another graph),
    and the shapes a search built instead of searching again (its pricing and budget are timings too)."""
    raw = {**original.config, "data": {**original.config.get("data", {}), "version": original.data_hash, "record_version": False}}
    compress = original.config.get("compress", {})
    if original.searched:  # the shapes the search built, as written chains: its choices rest on timings, which vary
        compress = {**compress, "search": {**compress.get("search", {}), "enabled": False},
                    "variants": {**compress.get("variants", {}), **original.searched}}  # fmt: skip
        raw["compress"] = compress
    if original.winners and isinstance(compress.get("variants"), dict):
        raw["compress"] = {**compress, "variants": pinned(compress["variants"], original.winners)}
    try:
        return validate_config(raw)
    except ConfigError as exc:
        raise ReproduceError(
            f"Run {original.run_id}'s config no longer validates with this code: {exc.problem}",
            f"Check out the commit it ran at (git checkout {original.commit}) and reproduce from there.",
        ) from None


def write_config(cfg: RunConfig, paths: Any, run_id: str) -> Path:
    """The rerun's config as a file the pipeline loads like any other (kept under .frugal/reproduce)."""
    path = paths.work / "reproduce" / f"{run_id}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


@dataclass
class Row:
    variant: str
    metric: str
    original: float | None
    reproduced: float | None

    @property
    def verdict(self) -> str:
        if self.original is None or self.reproduced is None:
            return "missing"
        if is_quality(self.metric):
            return "match" if self.original == self.reproduced else "DIFFERS"
        return f"x{self.reproduced / self.original:.2f}" if self.original else "n/a"


def diff(original: dict[str, dict[str, float]], again: dict[str, dict[str, float]]) -> list[Row]:
    rows = []
    for variant in sorted(original.keys() | again.keys(), key=lambda v: (v != "baseline", v)):
        before, after = original.get(variant, {}), again.get(variant, {})
        for metric in sorted(k for k in before.keys() | after.keys() if is_quality(k)) + [m for m in COST if m in before or m in after]:
            rows.append(Row(variant, metric, before.get(metric), after.get(metric)))
    return rows


def quality_matches(rows: list[Row]) -> bool:
    return all(r.verdict == "match" for r in rows if is_quality(r.metric))


def table(rows: list[Row], original: Recorded, again: Recorded) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.6g}"

    lines = [
        f"Original run {original.run_id} on {original.machine}",
        f"Reproduced as {again.run_id} on {again.machine}",
        "Quality metrics must be equal; cost metrics are the ratio reproduced / original.",
        "",
        "| variant | metric | original | reproduced | verdict |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.variant} | {r.metric} | {cell(r.original)} | {cell(r.reproduced)} | {r.verdict} |" for r in rows]
    return "\n".join(lines)


SUMMARY = (
    "macro_f1",
    "accuracy",
    "f1_retained",
    "usd_per_1m",
    "latency_p50_ms",
    "model_size_mb",
    *GENERATIVE_QUALITY,
    "quality_retained",
    "usd_per_1m_tokens",
    "tokens_per_s",
    "ttft_p50_ms",
)


def write_summary(run_id: str, path: str | Path) -> None:
    """A run's references and headline metrics as JSON, read back from MLflow: the metrics files of dvc.yaml's stages."""
    import json

    mlc = tracking.mlflow_client()
    run = mlc.get_run(run_id)
    tags = run.data.tags
    summary = {
        "run_id": run_id,
        "data_hash": tags.get("data_hash"),
        "stopped_after": tags.get("stopped_after"),
        "champion": tags.get("champion_variant"),
        "variants": {v: {k: m[k] for k in SUMMARY if k in m} for v, m in sorted(variant_metrics(mlc, run).items())},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=2) + "\n")
