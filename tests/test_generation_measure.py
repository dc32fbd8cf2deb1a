"""Measuring generative variants: task quality, $ per 1M output tokens, and the champion rule on a generative run's metrics.

The end-to-end test measures two tiny random causal-hf folders (tests/gen_helpers.py) through the evaluate stage's own code
(a fresh measuring process each, frugal/measure_generation.py) and selects between them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from gen_helpers import save_tiny_causal, write_tokenizer

from frugal.config import RunConfig, load_config
from frugal.measure_generation import pass_rates, quality_rows, timing_metrics
from frugal.paths import ProjectPaths
from frugal.runtime.generator import Generation
from ml.generation.quality import exact_match, field_f1, rouge_l, score
from tasks.evaluate_generate import prices
from tasks.plumbing import tracking
from tasks.plumbing.refs import DataRef, ModelRef, Scores, Variant
from tasks.register import Incumbent, Rule, decide
from tasks.reports.compare import Row, render_text
from tasks.reports.compare_reports import pareto_png
from tasks.select import Axes, choose, pareto_front, table

GENERATIVE = Axes("rouge_l", "usd_per_1m_tokens")


def test_rouge_l_exact_match_and_field_f1_on_hand_examples() -> None:
    assert rouge_l(["Markets rally as rates hold"], ["Markets rally as rates hold"]) == pytest.approx(1.0)
    assert rouge_l(["markets rallied"], ["Markets rally"]) == pytest.approx(1.0)  # stemmed, case-free
    assert rouge_l(["a b c d"], ["a x c y"]) == pytest.approx(0.5)  # LCS "a c": 2 of 4 each side
    assert rouge_l(["same", "other"], ["same", "nothing alike"]) == pytest.approx(0.5)  # the mean over rows
    assert exact_match(["  Hello   World ", "no"], ["hello world", "yes"]) == 0.5
    reference = '{"name": "Ada", "year": 1843, "tags": ["math"]}'
    assert field_f1([reference], [reference]) == 1.0
    # 2 of 3 pairs right, one wrong: precision 2/3, recall 2/3; strings compared case- and space-free
    assert field_f1(['{"name": " ada ", "year": 1842, "tags": ["math"]}'], [reference]) == pytest.approx(2 / 3)
    assert field_f1(['Sure! ```json\n{"name": "Ada"}\n```'], [reference]) == pytest.approx(2 * 1 / (1 + 3))  # JSON inside prose
    assert field_f1(['{"name": "Ada", "year": 18'], [reference]) == 0.0  # unparsable: no pairs
    assert field_f1(["[1, 2]"], [reference]) == 0.0  # JSON, but not an object
    assert field_f1(['{"a": {"b": 1}}'], ['{"a": {"b": 1, "c": 2}}']) == pytest.approx(2 / 3)  # nested keys flattened
    assert score("exact_match", ["x"], ["X"]) == 1.0


def gen(prompt: int, output: int, first_s: float, seconds: float) -> Generation:
    return Generation("x", prompt, output, "length", -1.0, first_s, seconds)


def test_usd_per_1m_tokens_prices_decode_seconds_per_output_token() -> None:
    # 20 output tokens in 2 s after the first tokens (0.5 s each), 100 prompt tokens prefilled in 1 s
    timed = [gen(40, 10, 0.5, 1.5), gen(60, 10, 0.5, 1.5)]
    assert pass_rates(timed) == {"tokens_per_s": 10.0, "prefill_tokens_per_s": 100.0}
    # $3.60/h = $0.001/s: 1M output tokens are 100,000 s of decoding, 1M prompt tokens 10,000 s of prefill
    assert prices(10.0, 100.0, usd_per_hour=3.6) == pytest.approx({"usd_per_1m_tokens": 100.0, "usd_per_1m_prompt_tokens": 10.0})
    slow = [gen(40, 10, 0.5, 2.5), gen(60, 10, 0.5, 2.5)]
    metrics = timing_metrics([timed, slow, timed])  # the median pass's rate; first-token times over every request
    assert metrics["tokens_per_s"] == 10.0 and metrics["tokens_per_s_spread"] == pytest.approx((10 - 5) / 10)
    assert metrics["ttft_p50_ms"] == metrics["ttft_p95_ms"] == pytest.approx(500.0) and metrics["timed_requests"] == 6


def s(name: str, rouge: float, usd: float, tps: float = 10.0) -> Scores:
    return Scores(variant=name, run_id=f"run-{name}", metrics={"rouge_l": rouge, "usd_per_1m_tokens": usd, "tokens_per_s": tps})


SCORES = [s("baseline", 0.40, 10.0), s("ort-int8", 0.395, 4.0), s("ort-int4", 0.38, 2.0), s("drop-half", 0.20, 1.0), s("worse", 0.3, 9.0)]


def test_the_champion_is_the_cheapest_variant_within_tolerance_of_the_baseline_rouge_l() -> None:
    assert choose(SCORES, SCORES[0], tolerance=0.01, axes=GENERATIVE).variant == "ort-int8"
    assert choose(SCORES, SCORES[0], tolerance=0.02, axes=GENERATIVE).variant == "ort-int4"
    assert choose(SCORES, SCORES[0], tolerance=0.0, axes=GENERATIVE).variant == "baseline"
    assert pareto_front(SCORES, GENERATIVE) == ["drop-half", "ort-int4", "ort-int8", "baseline"]
    md = table(SCORES, [Variant(name="spec", model=None, status="skipped", reason="no draft")], ["ort-int8"], "ort-int8", GENERATIVE)
    assert md.startswith("| variant | status | rouge_l | quality_retained | usd_per_1m_tokens |") and "macro_f1" not in md
    assert "| ort-int8 | ok champion frontier | 0.3950 |" in md and "| spec | skipped: no draft |" in md


def test_the_registry_rule_reads_the_generative_metrics() -> None:
    rule = Rule(0.40, tolerance=0.01, min_saving=0.05, quality="rouge_l", cost="usd_per_1m_tokens")
    current = Incumbent(version="1", model_uri="runs:/old/model", macro_f1=0.40, usd_per_1m=10.0, machine="aaa")
    promote, why = decide(current, {"rouge_l": 0.395, "usd_per_1m_tokens": 4.0}, "runs:/new/model", rule, machine="aaa")
    assert promote and "ROUGE-L 0.4000" in why and "/1M tokens" in why
    kept, why = decide(current, {"rouge_l": 0.30, "usd_per_1m_tokens": 1.0}, "runs:/new/model", rule, machine="aaa")
    assert not kept and "the challenger's ROUGE-L 0.3000" in why


def test_compare_shows_a_generative_runs_metrics_and_plots_them() -> None:
    rows = [Row("baseline", "p1", 0, "h", False, "gen", {"rouge_l": 0.4, "usd_per_1m_tokens": 10.0, "tokens_per_s": 12.0}),
            Row("ort-int8", "p1", 0, "h", True, "gen", {"rouge_l": 0.39, "usd_per_1m_tokens": 4.0, "ttft_p50_ms": 80.0})]  # fmt: skip
    header = render_text(rows).splitlines()[0].split()
    assert header[4:9] == ["rouge_l", "usd_per_1m_tokens", "tokens_per_s", "ttft_ms", "size_mb"] and "macro_f1" not in header
    assert pareto_png(rows).startswith(b"\x89PNG")


# -- end to end: two tiny causal-hf folders measured in their own processes, recorded and selected ---------------------------
@pytest.fixture(scope="module")
def gen_cfg() -> RunConfig:
    return load_config("generate-smoke")


def _logged(folder: Path, artifact: str, cfg: RunConfig, paths: ProjectPaths) -> str:
    with tracking.parent_run(cfg, paths, run_name=f"{artifact}-fixture") as run_id:
        tracking.log_dir(run_id, folder, artifact)
    return run_id


def test_evaluate_measures_and_selects_tiny_causal_variants(
    tmp_path: Path, gen_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    from tasks.evaluate import evaluate, measure_model
    from tasks.select import select

    texts = ["markets rallied as the bank held rates", "the club signed a striker", "scientists found ice on the moon"] * 4
    splits = tmp_path / "splits"
    splits.mkdir()
    pd.DataFrame({"prompt": [f"Headline: {t} {i}" for i, t in enumerate(texts)], "response": texts}).to_parquet(splits / "test.parquet")
    data = DataRef(md5="gen-measure-fixture", uri=f"runs:/{_logged(splits, 'data/splits', gen_cfg, store)}/data/splits", rows={"test": 12})
    write_tokenizer(tmp_path / "tok")
    built = {name: save_tiny_causal(tmp_path / name, tmp_path / "tok", layers=layers) for name, layers in (("baseline", 2), ("drop", 1))}
    variants = [Variant(name=n, model=ModelRef(run_id=_logged(dir_, "model", gen_cfg, store), seconds=1.0)) for n, dir_ in built.items()]

    base = evaluate.fn(variants[0], None, data, gen_cfg, store, parent_run, measure=measure_model.fn)
    drop = evaluate.fn(variants[1], base, data, gen_cfg, store, parent_run, measure=measure_model.fn)
    assert base is not None and drop is not None
    m = base.metrics
    assert 0.0 <= m["rouge_l"] <= 1.0 and m["quality_retained"] == (1.0 if m["rouge_l"] > 0 else 0.0)
    assert m["tokens_per_s"] > 0 and m["usd_per_1m_tokens"] > 0 and m["usd_per_1m_prompt_tokens"] > 0
    assert m["ttft_p95_ms"] >= m["ttft_p50_ms"] > 0 and m["timed_requests"] == gen_cfg.generate.measure_prompts * gen_cfg.evaluate.passes
    assert 50 < m["peak_rss_mb"] < 4000 and m["model_size_mb"] > 0 and m["params_m"] > 0
    assert drop.metrics["cost_ratio_vs_baseline"] == pytest.approx(drop.metrics["usd_per_1m_tokens"] / m["usd_per_1m_tokens"])
    run = tracking.mlflow_client().get_run(base.run_id)
    assert run.data.params["decoding"] == "greedy" and run.data.params["max_new_tokens"] == str(gen_cfg.generate.max_new_tokens)
    assert run.data.params["eval_rows"] == str(gen_cfg.generate.eval_rows) and "machine_fingerprint" in run.data.params
    answers = json.loads(tracking.download(base.run_id, "answers.json", tmp_path / "answers").read_text())
    test = pd.read_parquet(splits / "test.parquet")
    assert [a["reference"] for a in answers] == [test["response"][i] for i in quality_rows(12, gen_cfg.generate.eval_rows)]
    assert rouge_l([a["answer"] for a in answers], [a["reference"] for a in answers]) == pytest.approx(m["rouge_l"])

    selection = select.fn([base, drop], variants, gen_cfg, parent_run)
    expected = choose([base, drop], base, gen_cfg.select.tolerance, GENERATIVE)
    assert selection.champion.variant == expected.variant and "| rouge_l |" in selection.table_md
    assert {a.path for a in tracking.mlflow_client().list_artifacts(parent_run)} >= {"comparison.md", "pareto_frontier.png"}
