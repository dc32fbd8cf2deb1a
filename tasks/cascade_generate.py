"""cascade, task generate: `{cascade: [cheap, strong]}` over two generative variants, routed by the cheap part's mean log-prob.

The body tasks/cascade.py's cached `cascade` stage runs when the config's task is generate (the same stage, cache and
variant bookkeeping as a classify cascade). The cheap, strong and baseline models answer a seeded sample of
`generate.eval_rows` val prompts greedily (generate.max_new_tokens), through the runtime's Generator, as serving will;
the threshold is calibrated on them against the baseline's val score - select.tolerance (ml/generation/cascade.py), or
taken from the config. The cascade is then measured on the test split like every generative variant.
"""

from __future__ import annotations

import logging
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd

from frugal.config import CascadeConfig, RunConfig
from frugal.paths import ProjectPaths
from ml.generation.cascade import at_threshold, calibrate, val_generations, write_cascade
from ml.generation.quality import score
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef, Ref

log = logging.getLogger(__name__)


class GenerateCascadeSettings(Ref):
    """The config a generative cascade build reads (part of the `cascade` stage's cache key)."""

    metric: str
    tolerance: float
    eval_rows: int | None
    max_new_tokens: int
    seed: int
    threads: int
    device: str

    @classmethod
    def of(cls, cfg: RunConfig) -> GenerateCascadeSettings:
        gen, e = cfg.generate, cfg.evaluate
        return cls(metric=gen.metric, tolerance=cfg.select.tolerance, eval_rows=gen.eval_rows, max_new_tokens=gen.max_new_tokens,
                   seed=cfg.seed, threads=e.threads, device=e.device)  # fmt: skip


def val_prompts(data: DataRef, settings: GenerateCascadeSettings, paths: ProjectPaths) -> tuple[list[str], list[str]]:
    """The val prompts and reference responses the calibration generates for: a seeded sample of eval_rows (null = all)."""
    val = pd.read_parquet(store.data_dir(data, paths) / "val.parquet")
    if settings.eval_rows is not None and settings.eval_rows < len(val):
        val = val.sample(n=settings.eval_rows, random_state=settings.seed)
    return list(val["prompt"]), list(val["response"])


def generative_cascade(
    cheap: ModelRef, strong: ModelRef, baseline: ModelRef, spec: CascadeConfig, data: DataRef, settings: GenerateCascadeSettings,
    paths: ProjectPaths, parent_run: str,
) -> ModelRef:  # fmt: skip
    """Calibrate the threshold on val, write the causal-cascade folder and log it on a `cascade` step run."""
    started = time.perf_counter()
    prompts, references = val_prompts(data, settings, paths)
    models = {ref.run_id: ref for ref in (cheap, strong, baseline)}  # the baseline is often a part: generate with it once
    answers = {run: val_generations(store.model_dir(ref, paths), prompts, settings.max_new_tokens, settings.threads, settings.device)
               for run, ref in models.items()}  # fmt: skip
    scorer = partial(score, settings.metric)
    floor = scorer([g.text for g in answers[baseline.run_id]], references) - settings.tolerance
    confidence = [g.mean_logprob for g in answers[cheap.run_id]]
    texts = [g.text for g in answers[cheap.run_id]], [g.text for g in answers[strong.run_id]]
    if spec.threshold is None:
        found = calibrate(confidence, *texts, references, scorer, floor, settings.metric)
    else:
        found = at_threshold(confidence, *texts, references, scorer, spec.threshold, floor, settings.metric)
    tags = {"kind": "step", "step": "cascade", "source_run": cheap.run_id, "strong_run": strong.run_id}
    with tracking.nested_run(parent_run, "cascade", tags) as run_id, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        notes = {"cheap": spec.cheap, "strong": spec.strong, **found.model_dump(), "val_prompts": len(prompts)}
        write_cascade(store.model_dir(cheap, paths), store.model_dir(strong, paths), out, notes)
        seconds = time.perf_counter() - started
        tracking.log_params(run_id, {"method": "cascade", "cheap": spec.cheap, "strong": spec.strong, "threshold": found.threshold,
                                     "threshold_source": found.source, "tolerance": settings.tolerance, "metric": settings.metric,
                                     "val_prompts": len(prompts), "max_new_tokens": settings.max_new_tokens})  # fmt: skip
        tracking.log_metrics(run_id, {"deferred_share_val": found.deferred_share_val, f"val_{settings.metric}": found.val_score,
                                      "val_floor": found.floor, "step_seconds": seconds})  # fmt: skip
        tracking.log_dir(run_id, out, "model")
    log.info("Cascade %s -> %s: mean log-prob threshold %.4f defers %.1f%% of %d val prompts", spec.cheap, spec.strong, found.threshold,
             100 * found.deferred_share_val, len(prompts))  # fmt: skip
    return ModelRef(run_id=run_id, seconds=seconds)
