"""search: price every shape of compress.search untrained, then train, by bisection, only those that could beat the anchor.

The logic is ml/search.py. Pricing is one cached stage (`price_search`, a `search` step run holding every
candidate's predicted throughput and $/1M); each trained candidate is an ordinary variant built from its
chain by the cached compression steps, so a rerun after a crash reuses every finished candidate and resumes
the one in training from its checkpoint. After evaluation, `report` logs predicted vs measured cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pandas as pd

from frugal.config import ModelConfig, RunConfig, SearchConfig, load_hardware
from frugal.paths import ProjectPaths
from frugal.pricing import usd_per_1m
from frugal.runtime import load_predictor
from frugal.runtime.manifest import Manifest
from ml.compress.plan import chain
from ml.modeling import other_model
from ml.quality import quality
from ml.search import Bisection, Shape, fine_tuned_source, order, price, space, student_source, training_seconds
from tasks.compress import build_variant
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef, Ref, Scores, Variant
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)


class Priced(Ref):
    """What pricing found: each shape's predicted texts/s, the anchor's (the fine-tuned model through int8), and its run."""

    run_id: str
    anchor_per_s: float
    predicted_per_s: dict[str, float]  # shape name -> texts/s
    shapes: dict[str, tuple[int, float, float, str]]  # shape name -> (layers, heads_fraction, ffn_fraction, student)
    seconds: float


@stage(name="price_search", cached=True)
def price_search(
    baseline: ModelRef, search: SearchConfig, student: ModelConfig | None, data: DataRef, threads: int, per_hour: float,
    paths: ProjectPaths, parent_run: str,
) -> Priced:  # fmt: skip
    """Every shape of the space (cut from `student`, else from the fine-tuned model), built untrained and timed through int8;
    the figures on a `search` step run."""
    started = time.perf_counter()
    fine_tuned = store.model_dir(baseline, paths)
    texts = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")["text"][: search.price_texts])
    source = fine_tuned_source(fine_tuned) if student is None else student_source(student, Manifest.load(fine_tuned).labels, seed=0)
    shapes = space(search, source)
    with tracking.nested_run(parent_run, "search", {"kind": "step", "step": "search"}) as run_id:
        anchor = price(fine_tuned, None, texts, threads)
        predicted = {s.name: price(fine_tuned, s, texts, threads, source) for s in shapes}
        tracking.log_params(run_id, {"shapes": len(shapes), "price_texts": len(texts), "budget_minutes": search.budget_minutes})
        costs = {f"predicted_usd_per_1m.{n}": usd_per_1m(v, per_hour) for n, v in predicted.items()}
        tracking.log_metrics(run_id, {"anchor_per_s": anchor, "anchor_usd_per_1m": usd_per_1m(anchor, per_hour), **costs})
        seconds = time.perf_counter() - started
        tracking.log_metrics(run_id, {"pricing_seconds": seconds})
    log.info("Search: priced %d shapes in %.0f s; %d predicted cheaper than the fine-tuned model through int8 (%.0f texts/s)",
             len(shapes), seconds, sum(v > anchor for v in predicted.values()), anchor)  # fmt: skip
    return Priced(run_id=run_id, anchor_per_s=anchor, predicted_per_s=predicted,
                  shapes={s.name: (s.layers, s.heads_fraction, s.ffn_fraction, s.student) for s in shapes}, seconds=seconds)  # fmt: skip


def search(
    cfg: RunConfig, baseline: ModelRef, data: DataRef, paths: ProjectPaths, parent_run: str, run_step: Callable[..., ModelRef]
) -> tuple[list[Variant], Priced]:  # fmt: skip
    """The trained candidates (as variants), chosen by bisection over the shapes predicted cheaper than the anchor (ml/search.py),
    until the cheapest that keeps the bar on val is found or the next training would not finish within the budget."""
    started, s = time.monotonic(), cfg.compress.search
    priced = price_search(baseline, s, student_model(cfg), data, cfg.evaluate.threads, usd_per_hour(cfg), paths, parent_run)
    shapes = {name: Shape(*spec) for name, spec in priced.shapes.items()}
    floor = _baseline_val_f1(baseline) - cfg.select.tolerance
    rows, passes = _rows(cfg, data, paths)
    bisection = Bisection(order({shapes[n]: v for n, v in priced.predicted_per_s.items()}, priced.anchor_per_s))
    variants: list[Variant] = []
    while (shape := bisection.next()) is not None:
        share = priced.anchor_per_s / priced.predicted_per_s[shape.name]
        needs = training_seconds(share, baseline.seconds, passes, rows, s.epochs, teacher_read=bool(variants))
        if time.monotonic() - started + needs > s.budget_minutes * 60:
            variants.append(Variant(name=shape.name, model=None, status="skipped", reason=out_of_budget(s, started, variants, needs)))
            break
        variant = build_variant(shape.name, chain(shape.name, shape.steps(s, floor)), baseline, data, cfg, paths, parent_run, run_step)
        variants.append(variant)
        bisection.record(shape, variant.status == "ok" and _val_f1(variant, data, cfg, paths) >= floor)
    return variants, priced


def student_model(cfg: RunConfig) -> ModelConfig | None:
    """The search's pretrained student as a model section (the config's hub allowlist kept), or None: cut the fine-tuned model."""
    spec = cfg.compress.search.student
    return None if spec is None else other_model(cfg.model, spec.source, spec.name_or_path)


def usd_per_hour(cfg: RunConfig) -> float:
    """The serving instance's price (evaluate.instance in configs/hardware.yaml)."""
    return load_hardware()[cfg.evaluate.instance].usd_per_hour


def _rows(cfg: RunConfig, data: DataRef, paths: ProjectPaths) -> tuple[int, int]:
    """Texts each candidate trains on (the fine-tune's labelled rows plus the transfer rows), and the texts the fine-tune
    trained, epochs counted (its time per text scales a candidate's time)."""
    train = len(pd.read_parquet(store.data_dir(data, paths) / "train.parquet", columns=["label"]))
    labelled = min(train, cfg.finetune.max_rows or train)
    return min(train, labelled + cfg.compress.search.transfer_rows), round(labelled * cfg.finetune.epochs)


def _baseline_val_f1(baseline: ModelRef) -> float:
    return float(tracking.mlflow_client().get_run(baseline.run_id).data.metrics["best_val_macro_f1"])


def _val_f1(variant: Variant, data: DataRef, cfg: RunConfig, paths: ProjectPaths) -> float:
    val = pd.read_parquet(store.data_dir(data, paths) / "val.parquet")
    predictor = load_predictor(store.model_dir(variant.model, paths), threads=cfg.evaluate.threads)
    return quality(list(val["label"]), predictor.predict(list(val["text"]), cfg.evaluate.batch_size), cfg.data.labels)["macro_f1"]


def out_of_budget(s: SearchConfig, started: float, trained: list[Variant], needs: float) -> str:
    """Why the search stopped, and the budget that would train this shape too (estimated from the fine-tune's time)."""
    spent = time.monotonic() - started
    done = f"{len(trained)} candidate(s) trained" if trained else "no candidate trained"
    return (
        f"the search budget of {s.budget_minutes:g} min would end before this shape trains ({spent / 60:.1f} min spent, {done}; "
        f"it needs about {needs / 60:.1f} min): raise compress.search.budget_minutes (or --budget) "
        f"to at least {(spent + needs) / 60:.1f}"
    )


def report(priced: Priced, scores: list[Scores], parent_run: str, per_hour: float) -> str:
    """Predicted vs measured $/1M of every priced shape (measured: the trained ones), on the parent run as search.md."""
    predicted = {n: usd_per_1m(v, per_hour) for n, v in priced.predicted_per_s.items()}
    anchor = f"| fine-tuned + int8 (anchor) | {usd_per_1m(priced.anchor_per_s, per_hour):.4f} | | |"
    text = cost_table(predicted, {s.variant: s.metrics["usd_per_1m"] for s in scores}, "$/1M", [anchor])
    tracking.log_text(parent_run, text, "search.md")
    return text


def cost_table(predicted: dict[str, float], measured: dict[str, float], unit: str, first: list[str]) -> str:
    """A markdown table of each shape's predicted cost against its measured one (cheapest predicted first), after `first` rows."""
    lines = [f"| shape | predicted {unit} | measured {unit} | error |", "|---|---|---|---|", *first]
    for name, cost in sorted(predicted.items(), key=lambda kv: kv[1]):
        if name in measured:
            lines.append(f"| {name} | {cost:.4f} | {measured[name]:.4f} | {measured[name] / cost - 1:+.0%} |")
        else:
            lines.append(f"| {name} | {cost:.4f} | not built | |")
    return "\n".join(lines) + "\n"
