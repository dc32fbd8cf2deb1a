"""compress: build one variant from the baseline by applying its step, or its chain of steps.

Each variant is a nested MLflow run holding its final model; each earlier step of a chain
is a run nested under it, with its own model, so every intermediate is traceable. Chains
that share a prefix reuse the prefix's model instead of recomputing it. A method that
raises marks its variant FAILED (error recorded) and the other variants go on; a method
the hardware cannot run marks its variant skipped, with the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import traceback
from pathlib import Path

from frugal.config import RunConfig, StepConfig
from frugal.errors import SkipVariant
from frugal.paths import ProjectPaths
from tasks import tracking
from tasks.common import Splits, Variant, stage
from tasks.compress import CompressContext, get_method
from tasks.compress.base import StepReport
from tasks.finetune import train_usd

log = logging.getLogger(__name__)


def context(cfg: RunConfig, data: Splits, paths: ProjectPaths) -> CompressContext:
    return CompressContext(
        data=data,
        labels=cfg.data.labels,
        seed=cfg.seed,
        train=cfg.finetune,
        model=cfg.model,
        serve_device=cfg.evaluate.device,
        scratch=paths.work / "scratch",
    )


def run_step(step: StepConfig, src: Path, run_id: str, paths: ProjectPaths, ctx: CompressContext) -> tuple[Path, float]:
    """Apply one method into a fresh model folder; log its options, report and model on `run_id`."""
    method = get_method(step.method).from_config(step.options())
    dst = paths.work / "models" / run_id
    tracking.log_params(run_id, {"method": step.method, **{f"option.{k}": v for k, v in method.options.model_dump().items()}})
    started = time.perf_counter()
    report = method.apply(src, dst, ctx) or StepReport()
    seconds = time.perf_counter() - started
    tracking.log_params(run_id, report.params)
    tracking.log_metrics(run_id, {**report.metrics, "step_seconds": seconds})
    if report.notes:
        tracking.set_tags(run_id, {"notes": " ".join(report.notes)})
    tracking.log_dir(run_id, dst, "model")
    return dst, seconds


def _prefix_key(baseline: Variant, steps: list[StepConfig]) -> str:
    spec = json.dumps([baseline.run_id, [s.model_dump() for s in steps]], sort_keys=True, default=str)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _cached(paths: ProjectPaths, key: str) -> dict | None:
    record = paths.work / "chains" / f"{key}.json"
    if record.is_file():
        found = json.loads(record.read_text())
        if Path(found["model_dir"]).is_dir():
            return found
    return None


def _remember(paths: ProjectPaths, key: str, run_id: str, model_dir: Path, seconds: float) -> None:
    record = paths.work / "chains" / f"{key}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_id": run_id, "model_dir": str(model_dir), "seconds": seconds}))


def _final_step(step: StepConfig, src: Path, key: str, variant_run: str, paths: ProjectPaths, ctx: CompressContext) -> tuple[Path, float]:
    """Run the variant's last step, or reuse the model when another variant already made exactly this one."""
    found = _cached(paths, key)
    if found is not None:
        tracking.log_params(variant_run, {"method": step.method})
        tracking.set_tags(variant_run, {"reused_from": found["run_id"]})
        tracking.log_dir(variant_run, Path(found["model_dir"]), "model")
        return Path(found["model_dir"]), found["seconds"]
    model_dir, took = run_step(step, src, variant_run, paths, ctx)
    _remember(paths, key, variant_run, model_dir, took)
    return model_dir, took


def build_variant(
    name: str, steps: list[StepConfig], baseline: Variant, data: Splits, cfg: RunConfig, paths: ProjectPaths, run_id: str
) -> Variant:
    ctx = context(cfg, data, paths)
    chain = " -> ".join(s.method for s in steps)
    variant_run = tracking.child_run(run_id, name, {"method": steps[-1].method, "chain": chain})
    src, parents, seconds = baseline.model_dir, [baseline.run_id], 0.0
    try:
        for i, step in enumerate(steps[:-1], start=1):
            key = _prefix_key(baseline, steps[:i])
            found = _cached(paths, key)
            if found is None:
                step_run = tracking.child_run(variant_run, f"{name}/{i}-{step.method}", {"role": "intermediate"})
                tracking.set_tags(step_run, {"parents": ",".join(parents)})
                model_dir, took = run_step(step, src, step_run, paths, ctx)
                tracking.end_run(step_run)
                found = {"run_id": step_run, "model_dir": str(model_dir), "seconds": took}
                _remember(paths, key, step_run, model_dir, took)
            src, seconds = Path(found["model_dir"]), seconds + found["seconds"]
            parents.append(found["run_id"])
        tracking.set_tags(variant_run, {"parents": ",".join(parents)})
        model_dir, took = _final_step(steps[-1], src, _prefix_key(baseline, steps), variant_run, paths, ctx)
        seconds += took
    except SkipVariant as skip:
        log.warning("Variant %s skipped: %s", name, skip.reason)
        tracking.set_tags(variant_run, {"status": "skipped", "skip_reason": skip.reason})
        tracking.end_run(variant_run)
        return Variant(name, variant_run, None, status="skipped", reason=skip.reason, parents=tuple(parents))
    except Exception as exc:  # a broken method must not sink the other variants
        log.error("Variant %s failed: %s: %s", name, type(exc).__name__, exc)
        tracking.set_tags(variant_run, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:5000]})
        tracking.log_text(variant_run, traceback.format_exc(), "error.txt")
        tracking.end_run(variant_run, "FAILED")
        return Variant(name, variant_run, None, status="failed", reason=f"{type(exc).__name__}: {exc}", parents=tuple(parents))
    tracking.log_metrics(variant_run, {"train_seconds": seconds, "train_usd": train_usd(seconds, cfg.finetune)})
    tracking.set_tags(variant_run, {"status": "ok"})
    tracking.end_run(variant_run)
    return Variant(name, variant_run, model_dir, parents=tuple(parents), train_seconds=seconds)


@stage(name="compress")
def compress(
    name: str, steps: list[StepConfig], baseline: Variant, data: Splits, cfg: RunConfig, paths: ProjectPaths, run_id: str
) -> Variant:
    """One variant; never raises for a method's own failure (see module docstring)."""
    return build_variant(name, steps, baseline, data, cfg, paths, run_id)
