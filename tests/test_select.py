from __future__ import annotations

import pytest

from tasks.evaluate import relative
from tasks.plumbing.refs import Scores, Variant
from tasks.select import choose, pareto_front, table


def s(name: str, f1: float, usd: float, tps: float = 100.0) -> Scores:
    return Scores(variant=name, run_id=f"run-{name}", metrics={"macro_f1": f1, "usd_per_1m": usd, "throughput_per_s": tps})


SCORES = [s("baseline", 0.80, 1.0, 100), s("int8", 0.795, 0.5, 200), s("tiny", 0.60, 0.1, 1000), s("worse", 0.70, 0.9, 110)]


def test_pareto_front_drops_dominated_variants() -> None:
    assert pareto_front(SCORES) == ["tiny", "int8", "baseline"]


def test_champion_is_the_cheapest_within_tolerance() -> None:
    assert choose(SCORES, SCORES[0], tolerance=0.01).variant == "int8"
    assert choose(SCORES, SCORES[0], tolerance=0.0).variant == "baseline"
    assert choose(SCORES, SCORES[0], tolerance=0.25).variant == "tiny"


def test_relative_metrics() -> None:
    rel = relative(SCORES[1].metrics, SCORES[0].metrics)
    assert rel == pytest.approx({"speedup_vs_baseline": 2.0, "cost_ratio_vs_baseline": 0.5, "f1_retained": 0.795 / 0.8})


def test_table_lists_skipped_and_failed_variants_with_reasons() -> None:
    variants = [
        Variant(name="fp16", model=None, status="skipped", reason="needs CUDA"),
        Variant(name="bad", model=None, status="failed", reason="boom"),
    ]
    md = table(SCORES, variants, ["int8"], "int8")
    assert "| int8 | ok champion frontier |" in md
    assert "| fp16 | skipped: needs CUDA |" in md and "| bad | failed: boom |" in md
