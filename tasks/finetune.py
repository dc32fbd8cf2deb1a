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

from frugal.config import AdapterConfig, FinetuneConfig, ModelConfig, TrainConfig, load_hardware
from frugal.errors import ConfigError
from frugal.modelio import Manifest, count_params, save_hf
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize
from tasks import store, tracking
from tasks.caching import digest
from tasks.common import DataRef, ModelRef, stage
from tasks.data import labelled_rows, read_split
from tasks.modeling import load_pretrained_with_notes, load_tokenizer, save_tokenizer
from tasks.noise import NoiseRef, flagged_texts, treated, weighted_cross_entropy
from tasks.training import TrainResult, check_precision, ensure_pad_token_id, resolve_device, train

log = logging.getLogger(__name__)
CODE = ("tasks.finetune", "tasks.training", "tasks.checkpoints", "tasks.modeling", "tasks.data", "tasks.noise", "frugal.modelio",
        "frugal.runtime", "tasks.federated", *(f"frugal.flower.frugal_fl.{m}" for m in ("server_app", "client_app", "task", "partition")))


def train_usd(seconds: float, cfg: TrainConfig) -> float:
    return seconds / 3600 * load_hardware()[cfg.instance].usd_per_hour


def training_record(result: TrainResult, cfg: TrainConfig, total: int) -> tuple[dict, dict]:
    """The record of every training step, plus its time and $."""
    params, metrics = result.record(total)
    return params, {**metrics, "train_seconds": result.seconds, "train_usd": train_usd(result.seconds, cfg)}


def checkpoint_dir(paths: ProjectPaths, stage_name: str, *inputs: object) -> Path:
    """Where a training stage keeps its resume point: named by what it trains on, so only the same work resumes it."""
    return paths.work / "checkpoints" / f"{stage_name}-{digest(*inputs)}"


@stage(name="finetune", cached=CODE)
def finetune(
    data: DataRef, model: ModelConfig, train_cfg: FinetuneConfig, labels: list[str], seed: int, paths: ProjectPaths, parent_run: str,
    noise: NoiseRef | None = None,
) -> ModelRef:  # fmt: skip
    """Fine-tune every weight, keep the checkpoint with the best val macro-F1, log it on a `finetune` step run.

    `noise` (the label_noise stage's run) drops or down-weights the rows it flagged; None trains on every row alike.
    """
    if train_cfg.federated.enabled:  # LoRA across Flower clients, FedAvg-merged: tasks/federated.py
        from tasks.federated import finetune_federated

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
        tokenizer = load_tokenizer(model)
        save_tokenizer(tokenizer, out)
        net, notes = load_pretrained_with_notes(model, labels, seed)
        if notes:  # e.g. the checkpoint's own head had another number of labels and was replaced
            tracking.set_tags(run_id, {"notes": " ".join(notes)})
        ensure_pad_token_id(net.config, tokenizer)
        net.config.save_pretrained(out)  # Tokenize reads the pad id and whether the model takes token types from it
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
        params, metrics = training_record(result, train_cfg, total)
        params["adapter"] = "none" if adapter is None else ("qlora" if adapter.quantize_4bit else "lora")
        params |= {"label_noise": f"{noise.action} {noise.flagged} flagged (run {noise.run_id})", "train_rows": len(rows)} if noise else {}
        tracking.log_params(run_id, params)
        tracking.log_metrics(run_id, metrics)
        tracking.log_history(run_id, result.history)
        tracking.log_dir(run_id, out, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is safe in the store now
    log.info("Fine-tuned in %.0f s on %s: best val macro-F1 %.4f", result.seconds, result.device, result.best_val_macro_f1)
    return ModelRef(run_id=run_id, seconds=result.seconds)


def check_4bit(cfg: FinetuneConfig) -> None:
    """QLoRA needs bitsandbytes' CUDA kernels: one clear error on any other machine (the baseline cannot be skipped)."""
    import importlib.util

    if resolve_device(cfg.device) != "cuda":
        raise ConfigError(
            "finetune.adapter.quantize_4bit (QLoRA) needs a CUDA device; this fine-tune runs on the CPU.",
            "Set finetune.adapter.quantize_4bit: false (plain LoRA) or run the finetune stage on a CUDA machine.",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("finetune.adapter.quantize_4bit (QLoRA) needs bitsandbytes.", "pip install -e '.[gpu]'")


def _lora_config(adapter: AdapterConfig):  # -> peft.LoraConfig
    from peft import LoraConfig, TaskType

    # SEQ_CLS also trains the new classifier head in full (peft's modules_to_save).
    return LoraConfig(
        task_type=TaskType.SEQ_CLS, r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
    )  # fmt: skip


def with_adapter(net, adapter: AdapterConfig, base_dir: Path):  # -> peft.PeftModel
    """`net` wrapped with LoRA adapters; with quantize_4bit, a 4-bit copy of it (`net` is kept in `base_dir` for the merge)."""
    from peft import get_peft_model

    if adapter.quantize_4bit:
        import torch
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForSequenceClassification, BitsAndBytesConfig

        net.save_pretrained(base_dir)  # the fp32 weights with this seed's head: the adapters are merged into these
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        net = AutoModelForSequenceClassification.from_pretrained(base_dir, quantization_config=quantization, device_map="cuda")
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    try:
        return get_peft_model(net, _lora_config(adapter))
    except ValueError as exc:  # peft knows no default target modules for this architecture, or a name matches no layer
        raise ConfigError(
            f"LoRA adapters cannot be placed on {type(net).__name__}: {exc}",
            "Set finetune.adapter.target_modules to the names of the model's attention Linear layers.",
        ) from None


def merged(net, adapter: AdapterConfig, base_dir: Path):  # -> torch.nn.Module
    """The fine-tuned model with its adapters merged into fp32 weights: a plain transformers model that serves as any other.

    After QLoRA the adapters (and head) are merged into the fp32 weights they were trained over, reloaded from `base_dir`,
    not into the 4-bit copy, whose weights would have to be dequantized with their rounding error.
    """
    if not adapter.quantize_4bit:
        return net.merge_and_unload().eval()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForSequenceClassification

    trained = {k: v.float().cpu() for k, v in get_peft_model_state_dict(net).items()}
    base = AutoModelForSequenceClassification.from_pretrained(base_dir)
    fp32 = get_peft_model(base, _lora_config(adapter))
    set_peft_model_state_dict(fp32, trained)
    return fp32.merge_and_unload().eval()
