"""search, task generate: price every (depth, precision) untrained, settle the anchor on val, then train by bisection only the
cut shapes that could beat it.

The logic is ml/search_generate.py; the shape of the stage is tasks/search.py's (one cached pricing stage with its own
`search` step run; every candidate an ordinary variant built by the cached compression steps, so a rerun reuses finished
candidates). What differs from classifiers: the shapes that train nothing (the fine-tuned model's own depth at each
precision) are checked on val first, cheapest first, and the first that keeps the bar is the anchor; the bar is the
fine-tuned model's val score (generate.metric on a seeded sample of generate.eval_rows val prompts) - select.tolerance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial

import pandas as pd

from frugal.config import GenerateConfig, RunConfig, SearchConfig
from frugal.measure_generation import sample_order
from frugal.paths import ProjectPaths
from frugal.pricing import usd_per_1m
from ml.compress.methods.layer_drop import LayerDropOptions
from ml.compress.plan import chain
from ml.generation.cascade import val_generations
from ml.generation.quality import score
from ml.search import Bisection, order
from ml.search_generate import CONVERSION_SECONDS, GenShape, depth_of, price, space, training_seconds
from tasks.cascade_generate import GenerateCascadeSettings, val_prompts
from tasks.compress import build_variant
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef, Ref, Scores, Variant
from tasks.plumbing.stage import stage
from tasks.search import cost_table, out_of_budget, usd_per_hour

log = logging.getLogger(__name__)


class PricedShapes(Ref):
    """What pricing found: each (depth, precision)'s predicted output tokens/s, and its run."""

    run_id: str
    predicted_per_s: dict[str, float]  # shape name -> output tokens/s
    shapes: dict[str, tuple[int, str]]  # shape name -> (layers, precision)
    seconds: float


@stage(name="price_search_generate", cached=True)
def price_search(
    baseline: ModelRef, search: SearchConfig, generate: GenerateConfig, data: DataRef, threads: int, per_hour: float,
    paths: ProjectPaths, parent_run: str,
) -> PricedShapes:  # fmt: skip
    """Every shape of the space, cut untrained, converted and timed decoding; the figures on a `search` step run."""
    started = time.perf_counter()
    fine_tuned = store.model_dir(baseline, paths)
    test = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")["prompt"])
    prompts = [test[i] for i in sample_order(len(test))[: search.price_prompts]]  # the prompts evaluation times first
    shapes = space(search, depth_of(fine_tuned))
    with tracking.nested_run(parent_run, "search", {"kind": "step", "step": "search"}) as run_id:
        predicted = {s.name: price(fine_tuned, s, prompts, generate.max_new_tokens, threads) for s in shapes}
        tracking.log_params(run_id, {"shapes": len(shapes), "price_prompts": len(prompts), "budget_minutes": search.budget_minutes,
                                     "new_tokens": generate.max_new_tokens})  # fmt: skip
        tracking.log_metrics(run_id, {f"predicted_usd_per_1m_tokens.{n}": usd_per_1m(v, per_hour) for n, v in predicted.items()})
        seconds = time.perf_counter() - started
        tracking.log_metrics(run_id, {"pricing_seconds": seconds})
    log.info("Search: priced %d shapes in %.0f s", len(shapes), seconds)
    return PricedShapes(run_id=run_id, predicted_per_s=predicted, shapes={s.name: (s.layers, s.precision) for s in shapes},
                        seconds=seconds)  # fmt: skip


@stage(name="val_quality", cached=True)
def val_quality(model: ModelRef, data: DataRef, settings: GenerateCascadeSettings, paths: ProjectPaths) -> float:
    """A generative model's val score: greedy answers to the seeded val sample through the runtime, as serving generates."""
    prompts, references = val_prompts(data, settings, paths)
    answers = val_generations(store.model_dir(model, paths), prompts, settings.max_new_tokens, settings.threads, settings.device)
    return score(settings.metric, [a.text for a in answers], references)


def search(
    cfg: RunConfig, baseline: ModelRef, data: DataRef, paths: ProjectPaths, parent_run: str, run_step: Callable[..., ModelRef]
) -> tuple[list[Variant], PricedShapes]:  # fmt: skip
    """The candidates (as variants): the shapes that train nothing, cheapest first, until one keeps the bar on val (the anchor);
    then, by bisection, the cut shapes predicted cheaper than it, while the next training fits in the budget."""
    started, s = time.monotonic(), cfg.compress.search
    priced = price_search(baseline, s, cfg.generate, data, cfg.evaluate.threads, usd_per_hour(cfg), paths, parent_run)
    predicted = {GenShape(*priced.shapes[n]): v for n, v in priced.predicted_per_s.items()}
    depth = depth_of(store.model_dir(baseline, paths))
    settings = GenerateCascadeSettings.of(cfg)
    keeps = partial(_keeps, floor=val_quality(baseline, data, settings, paths) - cfg.select.tolerance, data=data, settings=settings,
                    paths=paths)  # fmt: skip
    build = partial(_build, depth=depth, baseline=baseline, data=data, cfg=cfg, paths=paths, parent_run=parent_run, run_step=run_step)
    variants: list[Variant] = []
    anchor = None
    rows = _rows(cfg, data, paths)
    for shape in order({sh: v for sh, v in predicted.items() if sh.layers >= depth}, 0.0):  # train nothing: cheapest first
        variants.append(build(shape))
        if keeps(variants[-1]):
            anchor = shape
            break
    bisection = Bisection(order({sh: v for sh, v in predicted.items() if sh.layers < depth}, predicted[anchor] if anchor else 0.0))
    trained: list[Variant] = []
    depths_trained: set[int] = set()
    while (shape := bisection.next()) is not None:
        needs = (CONVERSION_SECONDS if shape.layers in depths_trained  # its layer_drop step is cached: a conversion is left
                 else training_seconds(shape.layers / depth, baseline.seconds, *rows, s.epochs))  # fmt: skip
        if time.monotonic() - started + needs > s.budget_minutes * 60:
            variants.append(Variant(name=shape.name, model=None, status="skipped", reason=out_of_budget(s, started, trained, needs)))
            break
        trained.append(build(shape))
        depths_trained.add(shape.layers)
        bisection.record(shape, keeps(trained[-1]))
    log.info("Search: anchor %s; %d cut shape(s) trained", anchor.name if anchor else "none (no full-depth shape kept the bar)",
             len(trained))  # fmt: skip
    return variants + trained, priced


def _build(shape: GenShape, depth: int, baseline: ModelRef, data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str,
           run_step: Callable[..., ModelRef]) -> Variant:  # fmt: skip
    steps = chain(shape.name, shape.steps(cfg.compress.search, depth), "causal-hf")
    return build_variant(shape.name, steps, baseline, data, cfg, paths, parent_run, run_step)


def _keeps(variant: Variant, floor: float, data: DataRef, settings: GenerateCascadeSettings, paths: ProjectPaths) -> bool:
    return variant.status == "ok" and variant.model is not None and val_quality(variant.model, data, settings, paths) >= floor


def _rows(cfg: RunConfig, data: DataRef, paths: ProjectPaths) -> tuple[int, int, int]:
    """(prompt/response rows fine-tuning trained, epochs counted; rows a candidate trains on; teacher answers it generates)."""
    train = len(pd.read_parquet(store.data_dir(data, paths) / "train.parquet", columns=["prompt"]))
    rows = min(train, cfg.finetune.max_rows or train)
    return round(rows * cfg.finetune.epochs), rows, LayerDropOptions.model_fields["sequence_rows"].default


def report(priced: PricedShapes, scores: list[Scores], parent_run: str, per_hour: float) -> str:
    """Predicted vs measured $ per 1M output tokens of every priced shape (measured: the built ones), as search.md."""
    predicted = {n: usd_per_1m(v, per_hour) for n, v in priced.predicted_per_s.items()}
    text = cost_table(predicted, {s.variant: s.metrics["usd_per_1m_tokens"] for s in scores}, "$/1M output tokens", [])
    tracking.log_text(parent_run, text, "search.md")
    return text
