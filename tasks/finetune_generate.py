"""finetune for task generate: the pretrained causal LM fine-tuned on the prompt/response pairs; the result is the fp32 `baseline`.

The loss is on the response tokens only (ml/generation/training.py); every weight trains, or with `finetune.adapter.enabled`
only LoRA adapters (QLoRA with `quantize_4bit`, CUDA only), merged before saving, so the baseline is a plain `causal-hf`
folder either way. The finetune stage (tasks/finetune.py) calls this when it is given the `generate` section: the same cache,
checkpoints (resume after a kill), MLflow step run and logging as a classifier's fine-tune.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

import pandas as pd

from frugal.config import FinetuneConfig, GenerateConfig, ModelConfig
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from frugal.pricing import train_usd
from ml.adapters import check_4bit, merged, with_adapter
from ml.checkpoints import checkpoint_dir
from ml.data import read_split
from ml.generation.modeling import causal_manifest, check_tokenizer, load_causal_lm, save_causal_model, tokenizer_for
from ml.generation.training import CausalTrainResult, encode_pairs, train_causal
from ml.training import check_precision
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef

log = logging.getLogger(__name__)


def finetune_generate(
    data: DataRef, model: ModelConfig, train_cfg: FinetuneConfig, generate: GenerateConfig, seed: int, paths: ProjectPaths, parent_run: str
) -> ModelRef:
    """Fine-tune the causal LM, keep the weights with the lowest val loss on response tokens, log them on a `finetune` step run."""
    check_settings(model, train_cfg, generate)  # before any data or weights are read, and before a run is opened
    adapter = train_cfg.adapter if train_cfg.adapter.enabled else None
    splits = store.data_dir(data, paths)
    ckpt = checkpoint_dir(paths, "finetune", data.md5, model, train_cfg, generate.chat, seed)
    train_rows = sampled(read_split(splits, "train"), train_cfg.max_rows, seed)
    with tracking.nested_run(parent_run, "finetune", {"kind": "step", "step": "finetune"}) as run_id, tempfile.TemporaryDirectory() as tmp:
        net, tokenizer = load_causal_lm(model, seed, generate.chat)
        if adapter is not None:
            net = with_adapter(net, adapter, Path(tmp) / "base", causal=True)
        train, val = (encode_pairs(tokenizer, rows, generate.chat, model.max_length) for rows in (train_rows, read_split(splits, "val")))
        result = train_causal(net, tokenizer, train, val, train_cfg, seed, checkpoint_dir=ckpt, resume_key=ckpt.name)
        if adapter is not None:
            net = merged(net, adapter, Path(tmp) / "base", causal=True)
        out = Path(tmp) / "model"
        manifest = causal_manifest(net, tokenizer, model.max_length, generate.chat)
        save_causal_model(net, tokenizer, out, manifest)
        log_causal_baseline(run_id, out, result, train_cfg, manifest.params, len(train_rows))
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is safe in the store now
    log.info("Fine-tuned in %.0f s on %s: best val loss %.4f per response token", result.seconds, result.device, result.best_val_loss)
    return ModelRef(run_id=run_id, seconds=result.seconds)


def check_settings(model: ModelConfig, train_cfg: FinetuneConfig, generate: GenerateConfig) -> None:
    """The user errors a generative fine-tune can have, each one message, raised before anything is loaded or written."""
    if train_cfg.federated.enabled:
        raise ConfigError(
            "finetune.federated is for task: classify; task: generate fine-tunes centrally.", "Set finetune.federated.enabled: false."
        )
    check_precision(train_cfg)
    if train_cfg.adapter.enabled and train_cfg.adapter.quantize_4bit:
        check_4bit(train_cfg)
    check_tokenizer(tokenizer_for(model), generate.chat)  # chat asked of a tokenizer without a chat template


def sampled(rows: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample of `max_rows` training pairs (null: all of them)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    return rows.sample(n=max_rows, random_state=seed).reset_index(drop=True)


def log_causal_baseline(run_id: str, out: Path, result: CausalTrainResult, cfg: FinetuneConfig, total: int, rows: int) -> None:
    """The fine-tune's params, metrics (with its time and $), curves and model on its step run, as a classifier's."""
    adapter = cfg.adapter if cfg.adapter.enabled else None
    params, metrics = result.record(total)
    params |= {"adapter": "none" if adapter is None else ("qlora" if adapter.quantize_4bit else "lora"), "train_rows": rows}
    metrics |= {"train_seconds": result.seconds, "train_usd": train_usd(result.seconds, cfg.instance)}
    tracking.log_params(run_id, params)
    tracking.log_metrics(run_id, metrics)
    tracking.log_history(run_id, result.history)
    tracking.log_dir(run_id, out, "model")
