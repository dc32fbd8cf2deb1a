"""Every compression method on every encoder family, and a pretrained head of another shape replaced with a note.

Each family is a tiny random model built from a config in code (hidden 32, 2 layers, 4 heads,
FFN 64) with the embedded WordPiece tokenizer, saved once per module as a frugal model folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import LocalSplits as Splits
from helpers import sample_texts, shrink

from frugal.config import RunConfig
from frugal.errors import ModelError, SkipVariant
from frugal.paths import ProjectPaths
from frugal.runtime import load_predictor
from frugal.runtime.formats.torch import count_params, load_torch, save_hf
from frugal.runtime.manifest import Manifest
from ml.compress import TorchMethod, get_method
from ml.families import family_of
from ml.modeling import embedded_model_path, tiny_family_config
from tasks.compress import StepSettings, context

FAMILIES = ["bert", "distilbert", "roberta", "deberta-v2", "electra", "modernbert"]
NAMES = {"bert": "BERT", "distilbert": "DistilBERT", "roberta": "RoBERTa", "deberta-v2": "DeBERTa-v2", "electra": "ELECTRA",
         "modernbert": "ModernBERT"}  # fmt: skip
# What each family's forward takes: token types only where the config has a token-type embedding.
INPUTS = {"bert": "input_ids,attention_mask,token_type_ids", "roberta": "input_ids,attention_mask,token_type_ids",
          "electra": "input_ids,attention_mask,token_type_ids"}  # fmt: skip
TORCH_METHODS = {
    "prune": {"heads_fraction": 0.5, "ffn_fraction": 0.5, "importance_batches": 2, "recovery_epochs": 0},
    "distill": {"layers": 1, "intermediate_size": 32, "epochs": 1},
    "dynamic_int8": {},
}
# A model reloaded from its folder computes the same float32 ops on the same weights: only summation order may differ.
RELOAD_MAX_ABS_DIFF = 1e-5
# fp32 ONNX agrees with PyTorch to float rounding (fused kernels sum in another order); more means a broken graph.
FP32_MAX_ABS_DIFF = 1e-3
# int8 rounds every weight: labels flip where two logits nearly tie. These random weights (initializer range 0.5, see
# frugal_folder) flip more than trained ones (0.88-0.93 measured here; the trained smoke model >= 0.9); a broken graph agrees ~1/3.
INT8_MIN_AGREEMENT = 0.8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def copy_tokenizer_files(dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_model_path() / name, dst / name)


def standardise_head(model: torch.nn.Module, batch: dict[str, np.ndarray], scale: float = 3.0) -> None:
    """Make the logits Linear a random projection of its input standardised over `batch`.

    A random tiny model gives every text the same label with near-tied logits, so label checks would
    pass without checking anything; this head spreads the texts over all labels with clear margins.
    """
    num_labels = model.config.num_labels
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels][-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _module, inputs, _out: seen.append(inputs[0].detach()))
    with torch.no_grad():
        model(**{k: torch.from_numpy(v) for k, v in batch.items()})
    hook.remove()
    mean = seen[0].mean(0)
    spread = (seen[0] - mean).norm(dim=1).mean()  # one scale for all features: none gets an outsized weight
    weight = torch.randn(num_labels, head.in_features, generator=torch.Generator().manual_seed(0)) * scale / spread
    head.weight.data, head.bias.data = weight, -(weight @ mean)


def frugal_folder(model_type: str, labels: list[str], texts: list[str], dst: Path, **size: int) -> Path:
    """A tiny random model of `model_type` saved as an `hf` frugal model folder with the embedded tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from frugal.runtime import Tokenize

    torch.manual_seed(0)
    config = tiny_family_config(model_type, labels, **size)
    # At the usual 0.02 a random model's pooled features differ between texts by ~1e-4: a head spreading them over the
    # labels would amplify float rounding past any tolerance. Larger weights make texts differ as in a trained model.
    config.initializer_range = 0.5
    model = AutoModelForSequenceClassification.from_config(config).eval()
    copy_tokenizer_files(dst / "tokenizer")
    model.config.save_pretrained(dst)  # Tokenize reads the pad id and token types from config.json
    standardise_head(model, Tokenize(dst, 64)(texts))
    save_hf(model, dst, Manifest(format="hf", labels=labels, max_length=64, params=count_params(model)))
    return dst


def model_type(model_dir: Path) -> str:
    return json.loads((model_dir / "config.json").read_text())["model_type"]


def logits(model_dir: Path, texts: list[str], model: torch.nn.Module | None = None) -> np.ndarray:
    """Logits of `model` (or the model folder's own predictor) on the folder's tokenization of `texts`."""
    predictor = load_predictor(model_dir)
    batch = predictor.tokenize(texts)
    if model is None:
        return predictor.logits(batch)
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


@pytest.fixture(scope="module")
def texts(smoke_splits: Splits) -> list[str]:
    return sample_texts(smoke_splits, 64)


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request: pytest.FixtureRequest, smoke_cfg: RunConfig, texts: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model folder per family, shared by the family's tests."""
    return frugal_folder(request.param, smoke_cfg.data.labels, texts, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def ctx(smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths):
    """Training methods train 4 steps on 64 labelled rows: enough to exercise them, not to learn."""
    cfg = shrink(smoke_cfg, finetune={"max_rows": 64, "epochs": 1, "evals_per_epoch": 1})
    return context(StepSettings.of(cfg), smoke_splits.dir, store)


def test_the_tiny_models_predict_every_label(checkpoint: Path, texts: list[str]) -> None:
    """Guards the label checks below: a model predicting one label for all texts would make them vacuous."""
    assert len(set(np.argmax(logits(checkpoint, texts), 1))) == 3


@pytest.mark.parametrize("name", list(TORCH_METHODS))
def test_torch_methods_reload_as_built(name: str, checkpoint: Path, texts: list[str], ctx, tmp_path: Path) -> None:
    method = get_method(name).from_config(TORCH_METHODS[name])
    assert isinstance(method, TorchMethod)
    model, manifest, report = method.build(checkpoint, ctx)
    built = logits(checkpoint, texts, model)
    method.save(model, manifest, checkpoint, tmp_path / name)
    reloaded = logits(tmp_path / name, texts)
    assert np.abs(built - reloaded).max() < RELOAD_MAX_ABS_DIFF
    assert (built.argmax(1) == reloaded.argmax(1)).all()
    if name in ("prune", "distill"):
        assert count_params(load_torch(tmp_path / name)) == manifest.params < Manifest.load(checkpoint).params


def test_pruning_halves_heads_and_neurons_and_the_result_exports(checkpoint: Path, texts: list[str], ctx, tmp_path: Path) -> None:
    report = get_method("prune").from_config(TORCH_METHODS["prune"]).apply(checkpoint, tmp_path / "pruned", ctx)
    assert report.params["heads_per_layer"] == [2, 2] and report.params["ffn_per_layer"] == [32, 32]
    model = load_torch(tmp_path / "pruned")
    family = family_of(model, "test")
    assert family.head_dim(model) == 8  # hidden 32 / 4 heads: pruning removes heads, never narrows one
    assert [family.heads(layer, 8) for layer in family.layers(model)] == [2, 2]
    exported = get_method("onnx_export").from_config({"check_texts": 16}).apply(tmp_path / "pruned", tmp_path / "onnx", ctx)
    assert exported.metrics["onnx_max_abs_diff"] < FP32_MAX_ABS_DIFF


def test_distilling_a_modernbert_says_what_changed_in_its_first_layer(smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path) -> None:
    src = frugal_folder("modernbert", smoke_cfg.data.labels, texts, tmp_path / "src")
    report = get_method("distill").from_config({"layers": 1, "epochs": 1}).apply(src, tmp_path / "student", ctx)
    assert any("teacher layer 1" in note and "LayerNorm" in note for note in report.notes)
    assert load_torch(tmp_path / "student").config.layer_types == ["sliding_attention"]  # the kept layer's own kind


def test_onnx_export_matches_pytorch(checkpoint: Path, texts: list[str], ctx, tmp_path: Path) -> None:
    report = get_method("onnx_export").from_config({"check_texts": 16}).apply(checkpoint, tmp_path / "onnx", ctx)
    assert report.params["onnx_inputs"] == INPUTS.get(model_type(checkpoint), "input_ids,attention_mask")
    assert report.params["fused"] is True, report.notes
    reference, onnx = logits(checkpoint, texts), logits(tmp_path / "onnx", texts)
    assert np.abs(onnx - reference).max() < FP32_MAX_ABS_DIFF
    assert (onnx.argmax(1) == reference.argmax(1)).all()


def test_onnx_int8_agrees_by_label(checkpoint: Path, texts: list[str], ctx, tmp_path: Path) -> None:
    report = get_method("onnx_int8").from_config({"check_texts": 64}).apply(checkpoint, tmp_path / "int8", ctx)
    assert Manifest.load(tmp_path / "int8").dtype == "int8"
    agree = np.mean(logits(tmp_path / "int8", texts).argmax(1) == logits(checkpoint, texts).argmax(1))
    assert agree >= INT8_MIN_AGREEMENT and report.metrics["agreement_with_source"] >= INT8_MIN_AGREEMENT


def test_deberta_without_shared_position_projections_prunes_them_too(smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path) -> None:
    """DeBERTa-v2 (not v3) has its own relative-position key/query projections: sliced with the same heads, or shapes break."""
    from transformers import AutoModelForSequenceClassification

    config = tiny_family_config("deberta-v2", smoke_cfg.data.labels)
    config.share_att_key = False
    src = tmp_path / "src"
    copy_tokenizer_files(src / "tokenizer")
    model = AutoModelForSequenceClassification.from_config(config).eval()
    save_hf(model, src, Manifest(format="hf", labels=smoke_cfg.data.labels, max_length=64, params=count_params(model)))
    method = get_method("prune").from_config({**TORCH_METHODS["prune"], "heads_fraction": 0.25})
    pruned, manifest, report = method.build(src, ctx)
    # 3 of 4 heads would not divide hidden size 32, which DeBERTa's loader requires: it keeps 4, and says so.
    assert report.params["heads_per_layer"] == [4, 4] and "keeps 4 of 4 heads per layer, not 3" in " ".join(report.notes)
    assert pruned.deberta.encoder.layer[0].attention.self.pos_key_proj.out_features == 32
    method.save(pruned, manifest, src, tmp_path / "p")
    assert np.abs(logits(tmp_path / "p", texts) - logits(src, texts, pruned)).max() < RELOAD_MAX_ABS_DIFF


def test_xlm_roberta_is_handled_as_roberta(smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path) -> None:
    src = frugal_folder("xlm-roberta", smoke_cfg.data.labels, texts, tmp_path / "src")
    method = get_method("prune").from_config(TORCH_METHODS["prune"])
    model, manifest, report = method.build(src, ctx)
    assert report.params["family"] == "RoBERTa" and report.params["heads_per_layer"] == [2, 2]
    method.save(model, manifest, src, tmp_path / "p")
    assert np.abs(logits(tmp_path / "p", texts) - logits(src, texts, model)).max() < RELOAD_MAX_ABS_DIFF


@pytest.mark.parametrize("method", ["prune", "distill"])
def test_an_unknown_family_is_skipped_naming_the_family_and_method(
    method: str, smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path
) -> None:
    src = frugal_folder("albert", smoke_cfg.data.labels, texts, tmp_path / "albert", layers=1)
    with pytest.raises(SkipVariant) as skipped:
        get_method(method).from_config(TORCH_METHODS[method]).apply(src, tmp_path / "out", ctx)
    assert skipped.value.reason.startswith(f"{method} does not support AlbertForSequenceClassification")
    assert "supported families: BERT, DistilBERT, RoBERTa, DeBERTa-v2, ELECTRA, ModernBERT" in skipped.value.reason


def test_an_unknown_family_still_exports_to_onnx(smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path) -> None:
    """ONNX export needs no family: an unknown one is fused as far as the optimizer detects on its own."""
    src = frugal_folder("albert", smoke_cfg.data.labels, texts, tmp_path / "albert", layers=1)
    report = get_method("onnx_export").from_config({"check_texts": 16}).apply(src, tmp_path / "onnx", ctx)
    assert report.metrics["onnx_max_abs_diff"] < FP32_MAX_ABS_DIFF


def test_a_failed_fusion_keeps_the_unfused_graph_and_says_so(
    smoke_cfg: RunConfig, texts: list[str], ctx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnxruntime.transformers import optimizer

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("no fusion for this graph")

    monkeypatch.setattr(optimizer, "optimize_model", broken)
    src = frugal_folder("deberta-v2", smoke_cfg.data.labels, texts, tmp_path / "src", layers=1)
    report = get_method("onnx_export").from_config({"check_texts": 16}).apply(src, tmp_path / "onnx", ctx)
    assert report.params["fused"] is False and not any(key.startswith("fused_") for key in report.params)
    expected = "DeBERTa-v2: ONNX Runtime graph fusion failed (ValueError: no fusion for this graph); the unfused graph is kept."
    assert report.notes == [expected]
    assert np.abs(logits(tmp_path / "onnx", texts) - logits(src, texts)).max() < FP32_MAX_ABS_DIFF


# -- a pretrained head of another shape


def two_label_checkpoint(dst: Path) -> Path:
    """A checkpoint as save_pretrained writes it, fine-tuned for 2 labels (a binary sentiment model), with its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_config(tiny_family_config("bert", ["negative", "positive"])).save_pretrained(dst)
    copy_tokenizer_files(dst)
    return dst


def test_a_head_of_another_shape_is_replaced_and_the_body_kept(smoke_cfg: RunConfig, tmp_path: Path, caplog) -> None:
    from safetensors.torch import load_file

    from ml.modeling import load_pretrained_with_notes

    src = two_label_checkpoint(tmp_path / "ckpt")
    cfg = smoke_cfg.model.model_copy(update={"source": "path", "name_or_path": str(src)})
    with caplog.at_level(logging.WARNING, logger="ml.modeling"):
        model, notes = load_pretrained_with_notes(cfg, smoke_cfg.data.labels, 0)
    assert model.classifier.out_features == 3
    assert len(notes) == 1 and "classifier.weight [2, 32] -> [3, 32]" in notes[0] and "fresh head" in notes[0]
    assert notes[0] in caplog.text
    saved = load_file(str(src / "model.safetensors"))
    assert torch.equal(model.bert.encoder.layer[1].intermediate.dense.weight, saved["bert.encoder.layer.1.intermediate.dense.weight"])


def test_a_body_that_contradicts_its_config_is_one_clear_error(smoke_cfg: RunConfig, tmp_path: Path) -> None:
    from ml.modeling import load_pretrained

    src = two_label_checkpoint(tmp_path / "ckpt")
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"intermediate_size": 48}))  # an FFN width the weights do not have
    cfg = smoke_cfg.model.model_copy(update={"source": "path", "name_or_path": str(src)})
    with pytest.raises(ModelError, match="does not match its own config.json: bert.encoder.layer"):
        load_pretrained(cfg, smoke_cfg.data.labels, 0)


def test_finetuning_a_two_label_checkpoint_for_three_labels_records_the_new_head(
    smoke_cfg: RunConfig, smoke_splits: Splits, store: ProjectPaths, parent_run: str, tmp_path: Path
) -> None:
    from tasks.finetune import finetune
    from tasks.plumbing.tracking import mlflow_client

    src = two_label_checkpoint(tmp_path / "ckpt")
    cfg = shrink(smoke_cfg, model={"source": "path", "name_or_path": str(src)}, finetune={"max_rows": 64, "epochs": 1})
    ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, parent_run)
    run = mlflow_client().get_run(ref.run_id)
    assert run.info.status == "FINISHED"
    assert "classifier.weight [2, 32] -> [3, 32]" in run.data.tags["notes"] and "fresh head" in run.data.tags["notes"]
