"""evaluate: every variant, the baseline included, on the test split, on this machine, the same way.

Quality and cost come from one measuring process per variant (frugal/measure.py), run one
after another so no two variants compete for the CPU, and one measurement at a time per machine
and measure pool (tasks/plumbing/measure_slot.py). Each names the machine it was measured on
(its fingerprint), and a measurement is reused only on that machine (its cache key has it). A generative
variant (task generate) goes through the same stage; what differs is tasks/evaluate_generate.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from frugal.config import EvaluateConfig, GenerateConfig, RunConfig, load_hardware
from frugal.paths import ProjectPaths
from frugal.pricing import train_usd, usd_per_1m
from frugal.runtime.manifest import Manifest, model_size_mb
from ml.quality import confusion_png, quality
from tasks import evaluate_generate
from tasks.plumbing import store, tracking
from tasks.plumbing.caching import MeasuringMachine
from tasks.plumbing.measure_slot import measurement_slot
from tasks.plumbing.refs import DataRef, Ref, Scores, Variant
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)
# The measuring process runs frugal.measure or frugal.measure_generation (a subprocess, not an import): this stage's code too.
CODE_DEPS = ("frugal.measure", "frugal.measure_generation")


def classify_request(cfg: EvaluateConfig) -> dict[str, Any]:
    """frugal.measure's settings."""
    return {
        "batch_size": cfg.batch_size,
        "threads": cfg.threads,
        "warmup_batches": cfg.warmup_batches,
        "latency_samples": cfg.latency_samples,
        "passes": cfg.passes,
        "arrival_order": cfg.arrival_order,
        "device": cfg.device,
    }


def run_measurement(model_dir: Path, test_parquet: Path, cfg: EvaluateConfig, generate: GenerateConfig | None = None) -> dict:
    """The measuring process's result: frugal.measure's, or frugal.measure_generation's with `generate` (task generate)."""
    if generate is None:
        module, request = "frugal.measure", classify_request(cfg)
    else:
        module, request = "frugal.measure_generation", evaluate_generate.request(cfg, generate)
    request = {"model_dir": str(model_dir), "test_parquet": str(test_parquet), **request}
    threads = str(cfg.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, "-m", module, str(out)], input=json.dumps(request), env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"measuring {model_dir} failed:\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


class Measurement(Ref):
    """What measuring a model on the test split gives: its predicted labels (generate: answers), its metrics and where."""

    predicted: list[str]
    metrics: dict[str, float]
    machine: dict[str, str] = {}  # frugal/hardware.py fingerprint fields, `machine_fingerprint` first (MLflow params)

    @property
    def fingerprint(self) -> str | None:
        return self.machine.get("machine_fingerprint")


@stage(name="measure", cached=True, keyed_also=MeasuringMachine())
def measure_model(
    model_uri: str, data: DataRef, evaluate_cfg: EvaluateConfig, paths: ProjectPaths, generate_cfg: GenerateConfig | None = None
) -> Measurement:
    """Quality inputs and cost of one model on the test split, in a fresh process (cached: a rerun on this machine reuses it).

    With `generate_cfg` (task generate, `measure_inputs`) the model generates: its answers are scored here already."""
    model_dir = store.resolve(model_uri, paths)
    test = store.data_dir(data, paths) / "test.parquet"
    with measurement_slot(paths):  # the timed process only: a download or a cache lookup holds no slot
        result = run_measurement(model_dir, test, evaluate_cfg, generate_cfg)
    if generate_cfg is not None:
        metrics = evaluate_generate.figures(result, model_dir, test, evaluate_cfg, generate_cfg)
        return Measurement(predicted=result["generated"], metrics=metrics, machine=result["machine"])
    manifest = Manifest.load(model_dir)
    price = load_hardware()[evaluate_cfg.instance].usd_per_hour
    metrics = {
        **result["metrics"],
        "model_size_mb": model_size_mb(model_dir),
        "params_m": manifest.params / 1e6,
        "usd_per_1m": usd_per_1m(result["metrics"]["throughput_per_s"], price),
    }
    return Measurement(predicted=[manifest.labels[i] for i in result["predicted"]], metrics=metrics, machine=result["machine"])


def measure_inputs(cfg: RunConfig) -> dict[str, Any]:
    """The config sections a measurement takes (its cache key): `evaluate`, and for task generate `generate` too."""
    return {"evaluate_cfg": cfg.evaluate} | ({"generate_cfg": cfg.generate} if cfg.task == "generate" else {})


def training(variant: Variant, cfg: RunConfig) -> dict[str, float]:
    """What making the variant cost, and the share of its weights that trained."""
    metrics = {"train_seconds": variant.train_seconds, "train_usd": train_usd(variant.train_seconds, cfg.finetune.instance)}
    if variant.model is not None:
        trained = tracking.mlflow_client().get_run(variant.model.run_id).data.metrics.get("trainable_share")
        if trained is not None:  # set by training steps (fine-tuning, LoRA, distillation, pruning recovery)
            metrics["trainable_share"] = trained
    return metrics


def score(measured: Measurement, truth: list[str], variant: Variant, cfg: RunConfig, baseline: Scores | None) -> dict[str, float]:
    """Every DESIGN.md metric of a variant: quality, cost, training cost, and relative to the baseline."""
    metrics = {**quality(truth, measured.predicted, cfg.data.labels), **measured.metrics, **training(variant, cfg)}
    return {**metrics, **relative(metrics, baseline.metrics if baseline else metrics)}


def relative(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """cost_ratio < 1 and speedup > 1 mean cheaper and faster than the baseline."""
    return {
        "speedup_vs_baseline": metrics["throughput_per_s"] / base["throughput_per_s"],
        "cost_ratio_vs_baseline": metrics["usd_per_1m"] / base["usd_per_1m"],
        "f1_retained": metrics["macro_f1"] / base["macro_f1"] if base["macro_f1"] > 0 else 0.0,
    }


def _record(variant: Variant, run_id: str, data: DataRef, cfg: RunConfig) -> None:
    tags = {"kind": "variant", "variant": variant.name, "status": variant.status, "steps": ",".join(variant.steps)}
    if variant.model is not None:
        tags["model_uri"] = variant.model.uri
    tracking.set_tags(run_id, {**tags, **({"skip_reason": variant.reason} if variant.status == "skipped" else {})})
    tracking.log_params(
        run_id,
        {"eval_threads": cfg.evaluate.threads, "eval_batch_size": cfg.evaluate.batch_size, "hardware_profile": cfg.evaluate.instance,
         "eval_device": cfg.evaluate.device, "test_rows": data.rows["test"]},
    )  # fmt: skip


def _classified(
    measured: Measurement, variant: Variant, baseline: Scores | None, test: Path, cfg: RunConfig, run_id: str
) -> dict[str, float]:
    """A classifier's metrics and confusion matrix on its variant run."""
    truth = list(pd.read_parquet(test)["label"])
    metrics = score(measured, truth, variant, cfg, baseline)
    tracking.log_metrics(run_id, metrics)
    with tempfile.TemporaryDirectory() as tmp:
        title, png = f"{variant.name}: test split", Path(tmp) / "confusion_matrix.png"
        tracking.log_file(run_id, confusion_png(truth, measured.predicted, cfg.data.labels, title, png))
    log.info(
        "%s: macro-F1 %.4f, p50 %.1f ms, %.0f texts/s, %.1f MB, $%.4f per 1M", variant.name, metrics["macro_f1"],
        metrics["latency_p50_ms"], metrics["throughput_per_s"], metrics["model_size_mb"], metrics["usd_per_1m"],
    )  # fmt: skip
    return metrics


@stage(name="evaluate")
def evaluate(
    variant: Variant, baseline: Scores | None, data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str, measure: Any = None
) -> Scores | None:
    """Measure one variant and record it as a variant run of this pipeline run; None if it was skipped or failed."""
    try:
        with tracking.nested_run(parent_run, variant.name, {"kind": "variant", "variant": variant.name}) as run_id:
            _record(variant, run_id, data, cfg)
            if variant.status == "failed":
                raise RuntimeError(f"building the variant failed: {variant.reason}")
            if variant.model is None:
                return None
            measured = (measure or measure_model)(model_uri=variant.model.uri, data=data, paths=paths, **measure_inputs(cfg))
            test = store.data_dir(data, paths) / "test.parquet"
            if cfg.task == "generate":
                metrics = evaluate_generate.record(measured, training(variant, cfg), baseline, test, cfg, run_id, variant.name)
            else:
                metrics = _classified(measured, variant, baseline, test, cfg, run_id)
            tracking.log_params(run_id, measured.machine)  # where its cost was measured: `frugal compare` shows it
    except Exception as exc:
        if baseline is None:  # nothing can be compared without the baseline
            raise
        log.error("Variant %s: %s", variant.name, exc)
        return None
    return Scores(variant=variant.name, run_id=run_id, metrics=metrics, machine=measured.fingerprint)
