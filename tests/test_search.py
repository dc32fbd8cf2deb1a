"""The search (ml/search.py, tasks/search.py) on the smoke model: every shape priced untrained, only shapes predicted cheaper
than the fine-tuned model through int8 trained, fastest first; a rerun reuses every priced and trained candidate; a budget
too small to train one says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from frugal.config import load_config
from frugal.paths import ProjectPaths
from ml.search import Shape, Source, order, space

pytestmark = pytest.mark.slow
SEARCH = ["compress.search.enabled=true", "compress.search.layers=[1, 2]", "compress.search.heads_fractions=[0.0, 0.5]",
          "compress.search.ffn_fractions=[0.0]", "compress.search.epochs=1", "compress.search.price_texts=64",
          "compress.variants={}", "finetune.epochs=2"]  # fmt: skip


def test_bisection_finds_the_cheapest_shape_that_keeps_the_bar_in_log_trainings() -> None:
    from ml.search import Bisection

    shapes = [Shape(1, h / 10) for h in range(9, -1, -1)]  # cheapest first: 10 shapes
    keeps = set(shapes[6:])  # quality grows with cost: the 7th cheapest is the cheapest that keeps the bar
    search, trained = Bisection(shapes), []
    while (shape := search.next()) is not None:
        trained.append(shape)
        search.record(shape, shape in keeps)
    assert search.best == shapes[6] and len(trained) <= 4


def tiny_bert(layers: int):  # noqa: ANN201
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64))


def test_the_space_leaves_out_the_anchor_and_orders_by_predicted_speed() -> None:
    cfg = load_config("smoke", SEARCH).compress.search
    assert space(cfg, Source(tiny_bert(2))) == [Shape(1, 0.0), Shape(1, 0.5), Shape(2, 0.5)]
    predicted = {Shape(1, 0.0): 300.0, Shape(1, 0.5): 500.0, Shape(2, 0.5): 150.0}
    assert order(predicted, anchor=200.0) == [Shape(1, 0.5), Shape(1, 0.0)]  # 150 < 200: cannot beat the anchor, never trained


def test_a_pretrained_students_space_keeps_its_full_depth_and_names_it() -> None:
    cfg = load_config("smoke", [*SEARCH, "compress.search.student={source: embedded}", "compress.search.layers=[1, 3]"]).compress.search
    shapes = space(cfg, Source(tiny_bert(2), student="mini"))  # 3 layers asked of a 2-layer student: its 2
    assert shapes == [Shape(1, 0.0, 0.0, "mini"), Shape(1, 0.5, 0.0, "mini"), Shape(2, 0.0, 0.0, "mini"), Shape(2, 0.5, 0.0, "mini")]
    assert shapes[3].name == "search-mini-2L-h50"
    (distill, int8) = shapes[3].steps(cfg, floor=0.7)
    assert distill.method == "distill_student" and distill.options()["student"] == {"source": "embedded", "name_or_path": None}
    assert distill.options()["intermediate"] == "none" and int8.method == "int8"  # logits only: one cached teacher pass for all
    assert distill.options()["give_up_below"] == round(0.7 - cfg.give_up_margin, 4)  # halfway, too far below the floor: stop


def runs(project: Path, overrides: list[str]):  # noqa: ANN201
    from flows.pipeline import run
    from tasks.plumbing import tracking

    result = run(config="smoke", overrides=overrides, project_dir=str(project))
    mlc = tracking.client(load_config("smoke"), ProjectPaths(project))
    experiment = mlc.get_run(result.run_id).info.experiment_id
    children = mlc.search_runs([experiment], f"tags.mlflow.parentRunId = '{result.run_id}'")
    return result, mlc, children


def task_states() -> dict[str, list[str]]:
    """The task runs of the newest flow run, by task name: their final state names."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as api:
        flow_run = api.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)[0]
        tasks = api.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    states: dict[str, list[str]] = {}
    for t in tasks:
        states.setdefault(t.name.rsplit("-", 1)[0], []).append(t.state.name)
    return states


def test_the_search_prices_every_shape_and_trains_only_those_that_could_win(prefect_server: None, project: Path) -> None:
    result, mlc, children = runs(project, SEARCH)
    (priced,) = [r for r in children if r.data.tags.get("step") == "search"]
    predicted = {k.removeprefix("predicted_usd_per_1m."): v for k, v in priced.data.metrics.items() if k.startswith("predicted_usd")}
    anchor = priced.data.metrics["anchor_usd_per_1m"]
    trained = {r.data.tags["variant"] for r in children if r.data.tags.get("kind") == "variant" and r.data.tags["variant"] != "baseline"}
    assert len(predicted) == 3 and trained and len(trained) < len(predicted)
    assert all(predicted[name] < anchor for name in trained)  # none whose untrained cost is above the anchor's is trained
    first = min(trained, key=lambda name: predicted[name])
    report = Path(mlc.download_artifacts(result.run_id, "search.md", str(project / ".frugal"))).read_text()
    assert f"| {first} |" in report and "not built" in report

    # A second run (as after a crash): the pricing and every trained candidate's steps come from the cache.
    runs(project, SEARCH)
    states = task_states()
    assert states["price_search"] == ["Cached"] and states["compress_step"] and set(states["compress_step"]) == {"Cached"}


def test_a_budget_too_small_to_train_one_candidate_says_so(prefect_server: None, project: Path) -> None:
    result, _, children = runs(project, [*SEARCH, "compress.search.budget_minutes=0.001"])
    skipped = [r for r in children if r.data.tags.get("status") == "skipped" and r.data.tags["variant"].startswith("search-")]
    assert len(skipped) == 1 and "search budget of 0.001 min would end before this shape trains" in skipped[0].data.tags["skip_reason"]
    assert "raise compress.search.budget_minutes (or --budget) to at least" in skipped[0].data.tags["skip_reason"]
    assert result.selection is not None  # the run goes on with the baseline


def test_the_budget_flag_reads_times_and_refuses_anything_else() -> None:
    from flows.commands import budget_minutes
    from frugal.errors import ConfigError

    assert (budget_minutes("20m"), budget_minutes("90s"), budget_minutes("1h"), budget_minutes("15")) == (20.0, 1.5, 60.0, 15.0)
    for bad in ("soon", "-5m", "0"):
        with pytest.raises(ConfigError, match="is not a positive time"):
            budget_minutes(bad)
