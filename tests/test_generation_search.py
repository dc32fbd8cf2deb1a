"""The search for task generate (ml/search_generate.py): its space, chains, pricing of untrained shapes and config rules.

The search run end to end (pricing, the anchor on val, the bisection, search.md) is in tests/test_generation_pipeline.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gen_helpers import save_tiny_causal, write_tokenizer

from frugal.config import load_config
from frugal.errors import ConfigError
from ml.compress.plan import chain
from ml.search import Bisection, order
from ml.search_generate import GenShape, decode, decode_rate, depth_of, price, space, training_seconds

PROMPTS = ["The football club signed", "Summarise the article in one headline.", "Rain again"]


def search_cfg(*overrides: str):
    return load_config("generate-smoke", [*overrides]).compress.search


@pytest.fixture(scope="module")
def deep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gsearch")
    write_tokenizer(root / "tok")
    return save_tiny_causal(root / "hf", root / "tok", seed=0, layers=6)


def test_the_space_always_holds_the_models_own_depth_at_every_precision() -> None:
    shapes = space(search_cfg("compress.search.layers=[2,9]"), depth=6)  # 9 is more than the model has: its own depth
    assert shapes == sorted(GenShape(n, p) for n in (2, 6) for p in ("int8", "int4"))


def test_a_full_depth_shape_converts_and_a_cut_one_distills_first() -> None:
    cfg = search_cfg("compress.search.epochs=2")
    assert [s.method for s in GenShape(6, "int4").steps(cfg, 6)] == ["genai"]
    cut = GenShape(2, "int8").steps(cfg, 6)
    assert [s.method for s in cut] == ["layer_drop", "genai"]
    assert cut[0].model_dump()["keep_layers"] == 2 and cut[0].model_dump()["epochs"] == 2 and cut[1].model_dump()["precision"] == "int8"
    assert [step.method.name for step in chain("x", cut, "causal-hf")] == ["layer_drop", "genai"]  # formats fit from the baseline's


def test_full_depth_shapes_are_checked_cheapest_first_and_cut_ones_only_when_cheaper_than_the_anchor() -> None:
    predicted = {GenShape(6, "int8"): 100.0, GenShape(6, "int4"): 150.0, GenShape(2, "int8"): 140.0, GenShape(2, "int4"): 300.0}
    assert order({s: v for s, v in predicted.items() if s.layers >= 6}, anchor=0.0) == [GenShape(6, "int4"), GenShape(6, "int8")]
    cut = {s: v for s, v in predicted.items() if s.layers < 6}
    assert order(cut, anchor=150.0) == [GenShape(2, "int4")]  # 2L-int8 is predicted dearer than the int4 anchor: never trained
    bisection = Bisection(order(cut, anchor=100.0))
    assert bisection.next() == GenShape(2, "int4")


def test_an_untrained_cut_is_priced_faster_than_the_whole_model(deep: Path) -> None:
    assert depth_of(deep) == 6
    whole = price(deep, GenShape(6, "int8"), PROMPTS, new_tokens=24, threads=1)
    one = price(deep, GenShape(1, "int8"), PROMPTS, new_tokens=24, threads=1)
    assert one > 1.5 * whole > 0  # 1 decoder layer of 6: the embedding and the head stay


def test_pricing_decodes_every_token_asked_even_when_the_model_would_stop(deep: Path, tmp_path: Path) -> None:
    import onnxruntime_genai as og

    from frugal.runtime.formats.genai import genai_config
    from ml.compress.methods.genai import GenAIOptions, build, set_eos, staged_input

    ort = tmp_path / "ort"
    build(staged_input(deep, tmp_path / "in"), ort, GenAIOptions(precision="int8"), tmp_path / "cache", 1)
    model = og.Model(genai_config(ort, 1))
    probe = og.Generator(model, og.GeneratorParams(model))
    probe.append_tokens([5, 6, 7])
    probe.generate_next_token()
    set_eos(ort, [int(probe.get_next_tokens()[0])])  # the token this random model picks first is now its end of sequence
    model = og.Model(genai_config(ort, 1))
    assert decode(model, [5, 6, 7], new_tokens=12)[0] == 11  # every token after the first, none cut short
    assert decode_rate(model, [[5, 6, 7]] * 3, new_tokens=12) > 0


def test_a_cut_shape_is_estimated_to_train_faster_than_a_deeper_one() -> None:
    shallow, deep_ = (training_seconds(share, 600.0, 600, 600, 128, 1.0) for share in (0.5, 0.8))
    assert 60 < shallow < deep_


REFUSED = [
    ("compress.search.heads_fractions=[0.5]", "heads_fractions: \\[0.0\\]"),
    ("compress.search.student={source: embedded}", "student: null"),
]


@pytest.mark.parametrize(("override", "fix"), REFUSED)
def test_a_generative_search_that_would_cut_heads_or_take_another_student_is_refused(override: str, fix: str) -> None:
    with pytest.raises(ConfigError, match=fix):
        load_config("generate-smoke", [override])


def test_reproduce_builds_the_shapes_the_search_built_instead_of_searching_again() -> None:
    """Pricing and the budget are timings: a second search may build other shapes, so a reproduction rebuilds the recorded ones."""
    from tasks.reports.reproduce import Recorded, _param, rerun_config

    layer_drop = {"method": "layer_drop", "keep_layers": _param("1"), "learning_rate": _param("None")}
    chain = [layer_drop, {"method": "genai", "precision": "int4"}]
    config = load_config("generate-smoke").model_dump(mode="json")
    cfg = rerun_config(Recorded("r", "0" * 32 + ".dir", config, "c", False, "m", searched={"search-1L-int4": chain}))
    assert cfg.compress.search.enabled is False
    steps = cfg.compress.chains()["search-1L-int4"]
    assert [(s.method, s.model_dump().get("keep_layers")) for s in steps] == [("layer_drop", 1), ("genai", None)]
