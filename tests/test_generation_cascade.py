"""Generative cascades: the routing rule, the val calibration, the folder, and the cascade stage for task generate.

The parts are two tiny random Llamas of one tokenizer (different seeds and depths), so their answers differ and
answering with the wrong part shows.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from gen_helpers import save_tiny_causal, write_tokenizer

import frugal
from frugal.bundle import serving_files
from frugal.config import CascadeConfig, RunConfig, load_config
from frugal.errors import ModelError, SkipVariant
from frugal.paths import ProjectPaths
from frugal.runtime.formats.gen_cascade import CascadeGeneration, CascadeGenerator
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import load_generator, packages
from ml.generation.cascade import at_threshold, calibrate, score_by_deferral, write_cascade
from tasks.cascade import build_cascade, cascade_model
from tasks.plumbing import store as model_store
from tasks.plumbing import tracking
from tasks.plumbing.refs import DataRef, ModelRef, Variant

PROMPTS = ["Markets rallied as the bank held rates.", "The club signed a striker.", "Scientists found water ice.", "Summarise it."]
NEW = 6


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen-cascade")
    write_tokenizer(root / "tok")
    cheap = save_tiny_causal(root / "cheap", root / "tok", seed=0, layers=1, chat=False)
    strong = save_tiny_causal(root / "strong", root / "tok", seed=1, layers=2, chat=False)
    return cheap, strong


def cascade(parts: tuple[Path, Path], out: Path, threshold: float) -> CascadeGenerator:
    write_cascade(*parts, out, {"threshold": threshold})
    generator = load_generator(out, threads=1)
    assert isinstance(generator, CascadeGenerator)
    return generator


def exact_match(predictions: list[str], references: list[str]) -> float:
    return sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)


# --- the generator ---------------------------------------------------------------------------------------------------------------


def test_minus_infinity_always_answers_with_the_cheap_part_and_plus_infinity_with_the_strong(
    parts: tuple[Path, Path], tmp_path: Path
) -> None:
    cheap, strong = (load_generator(p, threads=1) for p in parts)
    never, always = cascade(parts, tmp_path / "never", -math.inf), cascade(parts, tmp_path / "always", math.inf)
    for prompt in PROMPTS[:2]:
        c, s = cheap.generate(prompt, NEW), strong.generate(prompt, NEW)
        assert c.text != s.text  # so answering with the wrong part shows
        by_cheap, by_strong = never.generate(prompt, NEW), always.generate(prompt, NEW)
        assert isinstance(by_cheap, CascadeGeneration) and by_cheap.answered_by == "cheap"
        assert (by_cheap.text, by_cheap.output_tokens, by_cheap.mean_logprob) == (c.text, c.output_tokens, pytest.approx(c.mean_logprob))
        assert by_cheap.generated_tokens == c.output_tokens
        assert by_strong.answered_by == "strong" and by_strong.cheap_mean_logprob == pytest.approx(c.mean_logprob)
        assert (by_strong.text, by_strong.output_tokens, by_strong.prompt_tokens) == (s.text, s.output_tokens, s.prompt_tokens)
        # priced end to end: the answer's tokens are billed, the cheap attempt's time and tokens are not hidden
        assert by_strong.generated_tokens == s.output_tokens + c.output_tokens
        assert by_strong.first_token_s <= by_strong.stream_first_token_s <= by_strong.seconds  # prefill priced, the buffer waited
        streamed = list(always.stream(prompt, NEW))
        assert "".join(t.text for t in streamed).strip() == s.text
        assert [i for i, _ in always.stream_ids(always.encode(prompt, NEW), NEW)] == [t.id for t in streamed]
    never.generate(PROMPTS[0], NEW)  # a prompt asked again counts once in the share
    assert never.extra_metrics()["deferred_share"] == 0 and always.extra_metrics()["deferred_share"] == 1
    assert always.extra_metrics()["stream_ttft_mean_ms"] > 0


def test_a_threshold_between_routes_each_prompt_by_the_cheap_parts_mean_logprob(parts: tuple[Path, Path], tmp_path: Path) -> None:
    cheap, strong = (load_generator(p, threads=1) for p in parts)
    confidence = {p: cheap.generate(p, NEW).mean_logprob for p in PROMPTS}
    threshold = sorted(confidence.values())[len(PROMPTS) // 2]  # half answer (>=), half defer
    routed = cascade(parts, tmp_path / "c", threshold)
    for prompt in PROMPTS:
        expected = cheap if confidence[prompt] >= threshold else strong
        got = routed.generate(prompt, NEW)
        assert got.text == expected.generate(prompt, NEW).text and got.answered_by == ("cheap" if expected is cheap else "strong")
    assert routed.extra_metrics()["deferred_share"] == 0.5


def test_the_folder_reloads_in_a_fresh_process_from_a_bundles_files_alone(parts: tuple[Path, Path], tmp_path: Path) -> None:
    routed = cascade(parts, tmp_path / "c", -1.0)
    here = routed.generate(PROMPTS[0], NEW)
    code = tmp_path / "code"  # only the files a bundle carries for this folder: the runtime, this format and its parts'
    for name in serving_files(tmp_path / "c"):
        (code / "frugal" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(frugal.__file__).parent / name, code / "frugal" / name)
    script = (f"from frugal.runtime.registry import load_generator; g = load_generator({str(tmp_path / 'c')!r}, threads=1)"
              f".generate({PROMPTS[0]!r}, {NEW}); import json; print(json.dumps([g.text, g.answered_by]))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=code)
    assert json.loads(out.stdout.splitlines()[-1]) == [here.text, here.answered_by]
    manifest = Manifest.load(tmp_path / "c")
    assert (manifest.format, manifest.task, manifest.notes["chat"]) == ("causal-cascade", "generate", False)
    assert manifest.params == sum(Manifest.load(p).params for p in parts)
    assert packages(tmp_path / "c") == ("torch", "transformers", "safetensors", "tokenizers", "jinja2")  # the parts' runtimes


def test_parts_of_another_vocabulary_are_refused_and_nothing_is_written(parts: tuple[Path, Path], tmp_path: Path) -> None:
    write_tokenizer(tmp_path / "tok", vocab_size=280)
    other = save_tiny_causal(tmp_path / "other", tmp_path / "tok", chat=False)
    with pytest.raises(ModelError, match="differ in task, vocabulary"):
        write_cascade(parts[0], other, tmp_path / "c", {"threshold": -1.0})
    assert not (tmp_path / "c").exists()


# --- the calibration, on answers made by hand ------------------------------------------------------------------------------------

REFS = ["a", "b", "c", "d", "e"]
CONFIDENCE = [-0.1, -2.0, -1.0, -3.0, -0.5]  # ranked: rows 3, 1, 2, 4, 0
CHEAP = ["a", "x", "x", "x", "e"]  # right on the sure rows 0 and 4 only
STRONG = ["a", "b", "c", "d", "x"]  # right except on row 4


def test_calibration_picks_the_lowest_threshold_that_keeps_the_bar() -> None:
    ranked, scores = score_by_deferral(CONFIDENCE, CHEAP, STRONG, REFS, exact_match)
    assert list(ranked) == [-3.0, -2.0, -1.0, -0.5, -0.1]
    assert scores == {0: 0.4, 1: 0.6, 2: 0.8, 3: 1.0, 4: 0.8, 5: 0.8}
    found = calibrate(CONFIDENCE, CHEAP, STRONG, REFS, exact_match, floor=0.75, metric="exact_match")
    assert (found.threshold, found.deferred_share_val, found.val_score) == (-1.5, 0.4, 0.8)  # defer rows 3 and 1
    found = calibrate(CONFIDENCE, CHEAP, STRONG, REFS, exact_match, floor=0.95, metric="exact_match")
    assert (found.threshold, found.deferred_share_val, found.val_score) == (-0.75, 0.6, 1.0)
    fixed = at_threshold(CONFIDENCE, CHEAP, STRONG, REFS, exact_match, -0.75, floor=0.95, metric="exact_match")
    assert (fixed.deferred_share_val, fixed.val_score, fixed.source) == (0.6, 1.0, "config")


def test_calibration_skips_a_cascade_that_never_defers_must_defer_everything_or_cannot_reach_the_bar() -> None:
    with pytest.raises(SkipVariant, match="cheap part alone keeps val exact_match >= 0.3000"):
        calibrate(CONFIDENCE, CHEAP, STRONG, REFS, exact_match, floor=0.3, metric="exact_match")
    with pytest.raises(SkipVariant, match="only deferring every val prompt"):
        calibrate(CONFIDENCE, ["x", "x", "x", "x", "e"], REFS, REFS, exact_match, floor=1.0, metric="exact_match")  # wrong when surest
    with pytest.raises(SkipVariant, match="no threshold keeps val exact_match >= 1.0100"):
        calibrate(CONFIDENCE, CHEAP, STRONG, REFS, exact_match, floor=1.01, metric="exact_match")


# --- the cascade stage, task generate --------------------------------------------------------------------------------------------


def test_the_cascade_stage_builds_a_generative_cascade_calibrated_on_val(
    parts: tuple[Path, Path], store: ProjectPaths, tmp_path: Path
) -> None:
    from ml.generation.quality import score

    cfg: RunConfig = load_config("generate-smoke", ["select.tolerance=0.0", "generate.eval_rows=4"])
    cheap, strong = (load_generator(p, threads=1) for p in parts)
    strong_texts = [strong.generate(p, cfg.generate.max_new_tokens).text for p in PROMPTS]
    cheap_answers = [cheap.generate(p, cfg.generate.max_new_tokens) for p in PROMPTS]
    # references the strong part gets right, but for the cheap part's least sure prompt: some deferral keeps the bar
    sure = max(range(len(PROMPTS)), key=lambda i: cheap_answers[i].mean_logprob)
    references = [cheap_answers[i].text if i == sure else strong_texts[i] for i in range(len(PROMPTS))]
    (tmp_path / "splits").mkdir()
    pd.DataFrame({"prompt": PROMPTS, "response": references}).to_parquet(tmp_path / "splits" / "val.parquet")
    tracking.client(cfg, store)
    with tracking.parent_run(cfg, store, run_name="gen-cascade") as parent:
        tracking.log_dir(parent, tmp_path / "splits", "data/splits")
        data = DataRef(md5=f"fixture-{parent}", uri=f"runs:/{parent}/data/splits", rows={"val": len(PROMPTS)})
        refs = {}
        for name, folder in zip(("cheap", "baseline"), parts, strict=True):
            with tracking.nested_run(parent, name, {"kind": "step"}) as run_id:
                tracking.log_dir(run_id, folder, "model")
            refs[name] = ModelRef(run_id=run_id)
        variants = [Variant(name=n, model=r, steps=(r.run_id,)) for n, r in refs.items()]
        built = build_cascade("c", CascadeConfig(cascade=("cheap", "baseline")), variants, data, cfg, store, parent, cascade_model.fn)
    assert built.status == "ok", built.reason
    folder = model_store.model_dir(built.model, store)
    notes = Manifest.load(folder).notes
    floor = score(cfg.generate.metric, strong_texts, references)
    assert notes["floor"] == pytest.approx(floor) and notes["val_score"] >= floor and 0 < notes["deferred_share_val"] < 1
    routed = load_generator(folder, threads=1)
    assert routed.generate(PROMPTS[sure], cfg.generate.max_new_tokens).answered_by == "cheap"
    run = tracking.mlflow_client().get_run(built.model.run_id)
    assert float(run.data.params["threshold"]) == notes["threshold"] and run.data.tags["step"] == "cascade"
    assert run.data.metrics["deferred_share_val"] == notes["deferred_share_val"]
