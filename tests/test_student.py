"""A decoder LLM teacher fine-tuned with LoRA, distilled into a smaller encoder with a tokenizer of its own.

The teacher is a tiny random Llama classifier (with the embedded BERT tokenizer beside it), the
student a tiny random BERT with a WordPiece tokenizer trained here on the smoke texts, so the
two models differ in architecture, width, depth, vocabulary and tokenizer, as a real pair would.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import Built, LocalSplits
from helpers import shrink

from frugal.config import RunConfig
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize, load_predictor
from frugal.runtime.formats.torch import count_params, load_torch, save_hf
from frugal.runtime.manifest import Manifest
from ml.compress import get_method
from ml.compress.methods.student import PROJECTION
from ml.compress.transfer import layer_pairs
from ml.modeling import embedded_model_path
from ml.training import predict_logits
from tasks.compress import StepSettings, context
from tasks.plumbing import store as model_store
from tasks.plumbing import tracking

ADAPTER = {"enabled": True, "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, "quantize_4bit": False}
STUDENT_VOCAB = 800


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama classifier checkpoint: no pad id in its config, as decoder configs come."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64, vocab_size=30522,
        num_labels=3,
    )  # fmt: skip
    assert config.pad_token_id is None
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_model_path()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory: pytest.TempPathFactory, smoke_splits: LocalSplits) -> Path:
    """A tiny random BERT, narrower than the teacher, with its own small WordPiece vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("student")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    trainer = trainers.WordPieceTrainer(vocab_size=STUDENT_VOCAB, special_tokens=specials)
    tok.train_from_iterator(pd.read_parquet(smoke_splits.path("train"))["text"], trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llm_cfg(smoke_cfg: RunConfig, decoder_dir: Path) -> RunConfig:
    return shrink(smoke_cfg, model={"source": "path", "name_or_path": str(decoder_dir)}, finetune={"adapter": ADAPTER})


@pytest.fixture(scope="module")
def teacher(llm_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> Built:
    """The decoder fine-tuned with LoRA through the real finetune stage."""
    from tasks.finetune import finetune

    tracking.client(llm_cfg, store)
    with tracking.parent_run(llm_cfg, store, run_name="lora-teacher") as run_id:
        ref = finetune.fn(smoke_splits.ref, llm_cfg.model, llm_cfg.finetune, llm_cfg.data.labels, llm_cfg.seed, store, run_id)
    return Built(ref, model_store.model_dir(ref, store))


def student_options(student_dir: Path, **options: object) -> dict:
    return {"student": {"source": "path", "name_or_path": str(student_dir)}, **options}


def held_out_texts(splits: LocalSplits) -> list[str]:
    return [*pd.read_parquet(splits.path("val"))["text"], *pd.read_parquet(splits.path("test"))["text"]]


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def agreement(p: np.ndarray, q: np.ndarray) -> float:
    return float((p.argmax(1) == q.argmax(1)).mean())


def kl(p: np.ndarray, q: np.ndarray) -> float:
    """Mean KL(p || q) over rows."""
    return float(np.mean(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)), axis=1)))


def test_lora_finetune_of_a_decoder_saves_a_plain_merged_classifier(
    teacher: Built, decoder_dir: Path, llm_cfg: RunConfig, store: ProjectPaths
) -> None:
    from safetensors import safe_open

    run = tracking.client(llm_cfg, store).get_run(teacher.run_id)
    assert run.data.params["adapter"] == "lora"
    assert run.data.metrics["trainable_share"] < 0.2  # adapters and the head, not every weight
    assert Manifest.load(teacher.model_dir).format == "hf"
    config = json.loads((teacher.model_dir / "config.json").read_text())
    assert config["pad_token_id"] == 0  # the BERT tokenizer's [PAD]: the classifier reads each text's last real token
    weights = "model.safetensors"
    with safe_open(str(teacher.model_dir / weights), "pt") as saved, safe_open(str(decoder_dir / weights), "pt") as raw:
        assert not [k for k in saved.keys() if "lora" in k]  # merged: a plain Llama classifier
        query = "model.layers.0.self_attn.q_proj.weight"
        assert not torch.equal(saved.get_tensor(query), raw.get_tensor(query))  # the adapters were merged into it
    assert "token_type_ids" not in Tokenize(teacher.model_dir, 64)(["a text"])


def test_qlora_without_cuda_stops_with_one_clear_error(llm_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> None:
    from tasks.finetune import finetune

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: QLoRA runs (tests/test_student.py::test_qlora_on_cuda)")
    cfg = shrink(llm_cfg, finetune={"adapter": {**ADAPTER, "quantize_4bit": True}, "device": "auto"})
    with pytest.raises(ConfigError, match="quantize_4bit") as err:
        finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, "no-run-needed")
    assert "quantize_4bit: false" in err.value.fix


@pytest.mark.gpu
def test_qlora_on_cuda(llm_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths) -> None:
    pytest.importorskip("bitsandbytes")
    from tasks.finetune import finetune

    cfg = shrink(llm_cfg, finetune={"adapter": {**ADAPTER, "quantize_4bit": True}, "device": "cuda", "epochs": 1})
    tracking.client(cfg, store)
    with tracking.parent_run(cfg, store, run_name="qlora") as run_id:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, run_id)
    folder = model_store.model_dir(ref, store)
    assert Manifest.load(folder).format == "hf" and load_torch(folder).dtype == torch.float32
    assert len(load_predictor(folder).predict(held_out_texts(smoke_splits)[:8])) == 8


def test_student_with_its_own_tokenizer_learns_from_the_decoder_teacher(
    teacher: Built, student_dir: Path, smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths, tmp_path: Path
) -> None:
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    method = get_method("distill_student").from_config(student_options(student_dir, alpha=1.0))
    student, manifest, report = method.build(teacher.model_dir, ctx)
    method.save(student, manifest, teacher.model_dir, tmp_path / "student")

    texts = held_out_texts(smoke_splits)
    served = load_predictor(tmp_path / "student")
    assert served.tokenize._tok.get_vocab_size() == STUDENT_VOCAB  # the student's tokenizer ships, not the teacher's
    before = predict_logits(student, Tokenize(tmp_path / "student", manifest.max_length), texts, "cpu").argmax(1)
    trained = served.predict_proba(texts)
    assert (before == trained.argmax(1)).all()
    assert not any(PROJECTION in k for k in load_torch(tmp_path / "student").state_dict())

    # Learned from the teacher: closer to its predictions than the same student untrained (measured: agreement 0.725 vs
    # 0.525, KL 0.10 vs 0.20 on these 120 texts).
    from ml.modeling import load_pretrained

    fresh = load_pretrained(method.student_config(ctx), ctx.labels, ctx.seed)
    untrained = softmax(predict_logits(fresh, served.tokenize, texts, "cpu"))
    taught = load_predictor(teacher.model_dir).predict_proba(texts)
    assert agreement(taught, trained) >= agreement(taught, untrained) + 0.1
    assert kl(taught, trained) < 0.6 * kl(taught, untrained)
    assert report.metrics["params_vs_teacher"] < 0.1 and count_params(student) < count_params(load_torch(teacher.model_dir))
    assert report.params["intermediate_used"] == "hidden" and not report.notes  # the default; nothing refused


def test_hidden_transfer_crosses_tokenizers_and_attention_needs_the_same_kind(
    teacher: Built, student_dir: Path, smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths, tmp_path: Path
) -> None:
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    short = {"intermediate": "hidden+attention", "epochs": 1}

    # Different tokenizers and widths (16 -> 32, through a learned projection): hidden states only.
    _, _, report = get_method("distill_student").from_config(student_options(student_dir, **short)).build(teacher.model_dir, ctx)
    assert report.params["intermediate_used"] == "hidden"
    assert json.loads(report.params["layer_pairs"]) == [[0, 0], [1, 1]]
    assert any("tokenizers differ" in note for note in report.notes)

    # The same tokenizer as the Llama teacher, but a bidirectional student: its causal maps are refused.
    tiny = {"student": {"source": "tiny"}, **short}
    _, _, report = get_method("distill_student").from_config(tiny).build(teacher.model_dir, ctx)
    assert report.params["intermediate_used"] == "hidden"
    assert any("causal" in note for note in report.notes)

    # A BERT teacher with the student's tokenizer: both transfers run, and the student's width matches (no projection).
    bert = _bert_teacher(ctx, tmp_path / "bert")
    student, _, report = get_method("distill_student").from_config({**tiny, "layers": 1}).build(bert, ctx)
    assert report.params["intermediate_used"] == "hidden+attention"
    assert not [note for note in report.notes if "refused" in note]
    assert json.loads(report.params["layer_pairs"]) == [[0, 1]]
    assert student.config.num_hidden_layers == 1 and student.config._attn_implementation != "eager"


def test_a_pretrained_student_is_cut_by_weight_magnitude_and_its_shapes_share_one_teacher_pass(
    teacher: Built, student_dir: Path, smoke_cfg: RunConfig, smoke_splits: LocalSplits, store: ProjectPaths, tmp_path: Path
) -> None:
    ctx = context(StepSettings.of(smoke_cfg), smoke_splits.dir, store)
    ctx = dataclasses.replace(ctx, scratch=tmp_path / "scratch")  # this test's own teacher cache
    options = {"intermediate": "none", "epochs": 1}
    cut = get_method("distill_student").from_config(student_options(student_dir, heads_fraction=0.5, ffn_fraction=0.5, **options))
    student, manifest, report = cut.build(teacher.model_dir, ctx)
    assert report.params["heads_per_layer"] == [1, 1] and report.params["ffn_per_layer"] == [16, 16]  # of 2 heads, 32 neurons
    assert manifest.lineage[-1].endswith("-h50-f50")
    cut.save(student, manifest, teacher.model_dir, tmp_path / "cut")
    assert len(load_predictor(tmp_path / "cut").predict(held_out_texts(smoke_splits)[:8])) == 8
    passes = sorted(ctx.scratch.glob("teacher/teacher-*.npz"))
    stamps = [p.stat().st_mtime_ns for p in passes]
    assert len(passes) == 1

    # Another shape of the same student learns from the same teacher pass, read from disk.
    get_method("distill_student").from_config(student_options(student_dir, layers=1, **options)).build(teacher.model_dir, ctx)
    assert sorted(ctx.scratch.glob("teacher/teacher-*.npz")) == passes and [p.stat().st_mtime_ns for p in passes] == stamps


def test_magnitude_keeps_the_heads_and_neurons_with_the_largest_weights() -> None:
    from transformers import BertConfig, BertForSequenceClassification

    from ml.compress.importance import cut, magnitude_scores
    from ml.families import family_of

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=8))
    attention, ffn = model.bert.encoder.layer[0].attention.self, model.bert.encoder.layer[0].intermediate.dense
    with torch.no_grad():
        attention.query.weight[16:24] *= 10  # head 2 of 4 (8 features each)
        ffn.weight[5] *= 10
    marked_query, marked_neuron = attention.query.weight[16:24].clone(), ffn.weight[5].clone()
    family = family_of(model, "test")
    cut(model, family, magnitude_scores(model, family), heads_fraction=0.75, ffn_fraction=0.875)
    kept = model.bert.encoder.layer[0]
    assert torch.equal(kept.attention.self.query.weight, marked_query) and torch.equal(kept.intermediate.dense.weight[0], marked_neuron)


def _bert_teacher(ctx, folder: Path) -> Path:
    """An untrained tiny BERT classifier as a teacher folder: enough to check which transfers run."""
    from ml.modeling import load_pretrained, load_tokenizer, save_tokenizer

    model = load_pretrained(ctx.model, ctx.labels, seed=1)
    save_hf(model, folder, Manifest(format="hf", labels=ctx.labels, max_length=ctx.model.max_length, params=count_params(model)))
    save_tokenizer(load_tokenizer(ctx.model), folder)
    return folder


def test_layer_pairs_map_the_shallower_model_onto_evenly_spaced_layers() -> None:
    assert layer_pairs(3, 6) == [(0, 1), (1, 3), (2, 5)]
    assert layer_pairs(4, 2) == [(1, 0), (3, 1)]
    assert layer_pairs(2, 2) == [(0, 0), (1, 1)]
    assert np.array(layer_pairs(1, 12)).tolist() == [[0, 11]]
