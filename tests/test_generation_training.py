"""Causal-LM fine-tuning (task: generate): response-only loss, full and LoRA, resume, and the loading checks.

A tiny random Llama over the in-code word tokenizer (model.source: tiny) learns to copy a few letters.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest
import torch
from gen_helpers import write_gguf

from frugal.config import load_config
from frugal.errors import ModelError
from frugal.runtime.registry import load_generator
from ml.generation.batches import IGNORE, collate, encode_pair, render_prompt, response_loss
from ml.generation.modeling import causal_manifest, check_tokenizer, load_causal_lm, save_causal_model, token_counters, tokenizer_for
from ml.generation.training import encode_pairs, train_causal, val_loss

LETTERS = list("abcdefgh")


def copy_task(rows: int, seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    picks = [" ".join(rng.choices(LETTERS, k=3)) for _ in range(rows)]
    return pd.DataFrame({"prompt": [f"copy: {p}" for p in picks], "response": picks})


def smoke(*overrides: str):
    return load_config("configs/generate-smoke.yaml", ["finetune.threads=2", *overrides])


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return copy_task(64, 0), copy_task(16, 1)


def fit(cfg, data, ckpt: Path | None = None, key: str = "k"):
    model, tokenizer = load_causal_lm(cfg.model, cfg.seed, cfg.generate.chat)
    train_df, val_df = data
    train, val = (encode_pairs(tokenizer, f, cfg.generate.chat, cfg.model.max_length) for f in (train_df, val_df))
    before = val_loss(model, val, tokenizer.pad_token_id, 8, "cpu")
    result = train_causal(model, tokenizer, train, val, cfg.finetune, cfg.seed, ckpt, key)
    return model, tokenizer, before, result


def test_labels_score_the_response_and_eos_only() -> None:
    tokenizer = tokenizer_for(smoke().model)
    for chat in (True, False):
        ids, labels = encode_pair(tokenizer, "copy: a b", "a b", chat, 64)
        prompt_len = len(tokenizer.encode(render_prompt(tokenizer, "copy: a b", chat), add_special_tokens=False))
        assert prompt_len > (8 if chat else 3)  # the chat template's turns and assistant header are part of the prompt
        assert labels[:prompt_len] == [IGNORE] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:] == tokenizer.encode("a b", add_special_tokens=False) + [tokenizer.eos_token_id]
    # The logits at position t predict token t + 1: those predicting prompt tokens do not move the loss, a response's do.
    batch = collate([(ids, labels)], tokenizer.pad_token_id)
    logits = torch.randn(1, len(ids), len(tokenizer))
    over_prompt, over_response = logits.clone(), logits.clone()
    over_prompt[0, : prompt_len - 1] += 5 * torch.randn_like(over_prompt[0, : prompt_len - 1])
    over_response[0, prompt_len - 1] += 5 * torch.randn_like(over_response[0, prompt_len - 1])
    loss = response_loss(logits, batch["labels"])
    assert torch.equal(loss, response_loss(over_prompt, batch["labels"]))
    assert not torch.allclose(loss, response_loss(over_response, batch["labels"]))


def test_finetune_lowers_response_loss_and_serves(data, tmp_path: Path) -> None:
    cfg = smoke("finetune.epochs=2", "finetune.learning_rate=0.01", "finetune.evals_per_epoch=2")
    model, tokenizer, before, result = fit(cfg, data)
    assert result.best_val_loss < before * 0.6, (before, result.history)
    assert result.best_val_loss == min(h["val_loss"] for h in result.history)
    manifest = causal_manifest(model, tokenizer, cfg.model.max_length, chat=True)
    save_causal_model(model, tokenizer, tmp_path / "m", manifest)
    generator = load_generator(tmp_path / "m", threads=1)
    assert generator.encode("copy: a b c", 4) == encode_pair(tokenizer, "copy: a b c", "", True, 256)[0][:-1]  # what serving prompts
    assert generator.manifest.notes == {"chat": True, "eos_token_ids": [tokenizer.eos_token_id]}
    assert generator.generate("copy: a b c", 8).output_tokens >= 1


def test_lora_trains_adapters_and_merges(data) -> None:
    from ml.adapters import merged, with_adapter

    cfg = smoke("finetune.adapter.enabled=true", "finetune.adapter.target_modules=[q_proj,v_proj]", "finetune.epochs=1")
    model, tokenizer = load_causal_lm(cfg.model, cfg.seed, True)
    net = with_adapter(model, cfg.finetune.adapter, Path("unused"), causal=True)
    train = encode_pairs(tokenizer, data[0], True, 256)
    result = train_causal(net, tokenizer, train, encode_pairs(tokenizer, data[1], True, 256), cfg.finetune, cfg.seed, None, "k")
    plain = merged(net, cfg.finetune.adapter, Path("unused"), causal=True)
    assert type(plain).__name__ == "LlamaForCausalLM" and not any("lora" in k for k in plain.state_dict())
    assert result.trainable_params < sum(p.numel() for p in plain.parameters()) / 5


class Crash(Exception):
    pass


def test_resume_from_checkpoint_equals_uninterrupted(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.generation import training

    cfg = smoke("finetune.epochs=1", "finetune.checkpoint_every_steps=3")  # 8 steps of 8 rows
    whole, _, _, result = fit(cfg, data)
    calls: list[int] = []
    real = training._response_loss

    def crash_at_5(*args: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 5:
            raise Crash
        return real(*args)

    monkeypatch.setattr(training, "_response_loss", crash_at_5)
    with pytest.raises(Crash):
        fit(cfg, data, tmp_path / "ckpt")
    monkeypatch.undo()
    resumed, _, _, again = fit(cfg, data, tmp_path / "ckpt")
    assert again.resumed_from_step == 3 and again.best_val_loss == pytest.approx(result.best_val_loss, abs=1e-6)
    for key, value in whole.state_dict().items():
        assert torch.allclose(value, resumed.state_dict()[key], atol=1e-6), key


def test_chat_without_template_is_one_error() -> None:
    cfg = smoke()
    tokenizer = tokenizer_for(cfg.model)
    tokenizer.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        check_tokenizer(tokenizer, chat=True)
    check_tokenizer(tokenizer, chat=False)
    count, count_prompt = token_counters(tokenizer, chat=False)
    assert count("a b c") == count_prompt("a b c") == 3


def test_gguf_of_an_unsupported_architecture_is_one_error(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "odd.gguf", "rwkv7")
    cfg = smoke("model.source=path", f"model.name_or_path={path}")
    with pytest.raises(ModelError, match="'rwkv7'"):
        load_causal_lm(cfg.model, 0, chat=False)


def test_the_finetune_stage_logs_a_causal_hf_baseline(data, store, parent_run: str, tmp_path: Path) -> None:
    from ml.generation.data import write_pairs
    from tasks.finetune import finetune
    from tasks.plumbing import store as model_store
    from tasks.plumbing import tracking
    from tasks.plumbing.refs import DataRef

    rows = write_pairs({"train": data[0], "val": data[1], "test": data[1]}, tmp_path / "splits")
    tracking.log_dir(parent_run, tmp_path / "splits", "data/splits")
    ref = DataRef(md5=f"gen-{parent_run}", uri=f"runs:/{parent_run}/data/splits", rows=rows)
    cfg = smoke("finetune.epochs=1", "finetune.max_rows=32")
    built = finetune.fn(ref, cfg.model, cfg.finetune, [], cfg.seed, store, parent_run, generate_cfg=cfg.generate)
    run = tracking.mlflow_client().get_run(built.run_id)
    assert run.data.params["train_rows"] == "32" and run.data.params["adapter"] == "none"
    assert {"best_val_loss", "train_seconds", "train_usd"} <= set(run.data.metrics)
    generator = load_generator(model_store.model_dir(built, store), threads=1)
    assert generator.manifest.task == "generate" and generator.chat and generator.generate("copy: a b", 4).output_tokens >= 1

    # chat asked of a tokenizer without a chat template: one error, before any run is opened or anything written
    model, tokenizer = load_causal_lm(cfg.model, 0, chat=False)
    tokenizer.chat_template = None
    model.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    plain = smoke("model.source=path", f"model.name_or_path={tmp_path / 'plain'}").model
    before = len(tracking.mlflow_client().search_runs([run.info.experiment_id]))
    with pytest.raises(ModelError, match="no chat template"):
        finetune.fn(ref, plain, cfg.finetune, [], cfg.seed, store, parent_run, generate_cfg=cfg.generate)
    assert len(tracking.mlflow_client().search_runs([run.info.experiment_id])) == before
