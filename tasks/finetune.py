"""finetune: fine-tuning of the pretrained model; the result is the fp32 `baseline` model.

Every weight trains, or with `finetune.adapter.enabled` only LoRA adapters and the classifier head
(QLoRA on a 4-bit copy with `quantize_4bit`, CUDA only), merged into the weights before saving, so
the baseline is a plain `hf` folder either way; `finetune.precision` bf16/fp16 autocasts the compute
over fp32 weights. Decoder LLM classifiers (Llama, Qwen2) train too:
their config gets a pad id, by which the classifier finds each text's last token.

A cached stage: rerunning the same data, model and fine-tuning settings reuses the model, and
a run killed mid-training resumes from its last checkpoint (kept under `.frugal/checkpoints/`,
named by the same inputs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from frugal.config import FinetuneConfig, GenerateConfig, ModelConfig, TrainConfig
from frugal.paths import ProjectPaths
from frugal.pricing import train_usd
from frugal.runtime import Tokenize
from frugal.runtime.formats.torch import count_params, save_hf
from frugal.runtime.manifest import Manifest
from ml.adapters import check_4bit, merged, with_adapter
from ml.checkpoints import checkpoint_dir
from ml.data import labelled_rows, read_split
from ml.modeling import load_pretrained_with_notes, load_tokenizer, save_tokenizer
from ml.noise import treated, weighted_cross_entropy
from ml.training import TrainResult, check_precision, ensure_pad_token_id, train
from tasks.federated import finetune_federated
from tasks.finetune_generate import finetune_generate
from tasks.label_noise import NoiseRef, flagged_texts
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)


def training_record(result: TrainResult, cfg: TrainConfig, total: int) -> tuple[dict, dict]:
    """The record of every training step, plus its time and $."""
    params, metrics = result.record(total)
    return params, {**metrics, "train_seconds": result.seconds, "train_usd": train_usd(result.seconds, cfg.instance)}


@stage(name="finetune", cached=True)
def finetune(
    data: DataRef, model: ModelConfig, train_cfg: FinetuneConfig, labels: list[str], seed: int, paths: ProjectPaths, parent_run: str,
    noise: NoiseRef | None = None, generate_cfg: GenerateConfig | None = None,
) -> ModelRef:  # fmt: skip
    """Fine-tune every weight, keep the checkpoint with the best val macro-F1, log it on a `finetune` step run.

    `noise` (the label_noise stage's run) drops or down-weights the rows it flagged; None trains on every row alike.
    `generate_cfg` (task generate): a causal LM on the prompt/response pairs instead (tasks/finetune_generate.py).
    """
    if generate_cfg is not None:
        return finetune_generate(data, model, train_cfg, generate_cfg, seed, paths, parent_run)
    if train_cfg.federated.enabled:  # LoRA across Flower clients, FedAvg-merged: tasks/federated.py
        return finetune_federated(data, model, train_cfg, labels, seed, paths, parent_run)
    adapter = train_cfg.adapter if train_cfg.adapter.enabled else None
    check_precision(train_cfg)  # before any data or model is loaded: the baseline cannot be skipped
    if adapter is not None and adapter.quantize_4bit:
        check_4bit(train_cfg)
    splits = store.data_dir(data, paths)
    ckpt = checkpoint_dir(paths, "finetune", data.md5, model, train_cfg, labels, seed, *([noise] if noise else []))
    rows = labelled_rows(read_split(splits, "train"), train_cfg.max_rows, seed)
    rows, weights = treated(rows, flagged_texts(noise), noise.action, noise.weight) if noise else (rows, None)
    with tracking.nested_run(parent_run, "finetune", {"kind": "step", "step": "finetune"}) as run_id, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        net = pretrained(model, labels, seed, out, run_id)
        if adapter is not None:
            net = with_adapter(net, adapter, Path(tmp) / "base")
        result = train(
            net,
            Tokenize(out, model.max_length),
            rows,
            read_split(splits, "val"),
            labels,
            train_cfg,
            seed,
            checkpoint_dir=ckpt,
            resume_key=ckpt.name,
            loss_fn=None if weights is None else weighted_cross_entropy(weights),
            desc="finetune",
        )
        if adapter is not None:
            net = merged(net, adapter, Path(tmp) / "base")
        total = count_params(net)
        save_hf(net, out, Manifest(format="hf", labels=labels, max_length=model.max_length, params=total))
        log_baseline(run_id, out, result, train_cfg, total, noise, len(rows))
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is safe in the store now
    log.info("Fine-tuned in %.0f s on %s: best val macro-F1 %.4f", result.seconds, result.device, result.best_val_macro_f1)
    return ModelRef(run_id=run_id, seconds=result.seconds)


def pretrained(model: ModelConfig, labels: list[str], seed: int, out: Path, run_id: str):  # -> torch.nn.Module
    """The pretrained model with a fresh head; its tokenizer and config written to `out` (Tokenize reads the pad id and
    whether the model takes token types from there)."""
    tokenizer = load_tokenizer(model)
    save_tokenizer(tokenizer, out)
    net, notes = load_pretrained_with_notes(model, labels, seed)
    if notes:  # e.g. the checkpoint's own head had another number of labels and was replaced
        tracking.set_tags(run_id, {"notes": " ".join(notes)})
    ensure_pad_token_id(net.config, tokenizer)
    net.config.save_pretrained(out)
    return net


def log_baseline(run_id: str, out: Path, result: TrainResult, cfg: FinetuneConfig, total: int, noise: NoiseRef | None, rows: int) -> None:
    """The fine-tune's params, metrics, curves and model on its step run."""
    adapter = cfg.adapter if cfg.adapter.enabled else None
    params, metrics = training_record(result, cfg, total)
    params["adapter"] = "none" if adapter is None else ("qlora" if adapter.quantize_4bit else "lora")
    params |= {"label_noise": f"{noise.action} {noise.flagged} flagged (run {noise.run_id})", "train_rows": rows} if noise else {}
    tracking.log_params(run_id, params)
    tracking.log_metrics(run_id, metrics)
    tracking.log_history(run_id, result.history)
    tracking.log_dir(run_id, out, "model")
