"""finetune: full fine-tuning of the pretrained model; the result is the fp32 `baseline` variant."""

from __future__ import annotations

import hashlib
import logging

import pandas as pd

from frugal.config import RunConfig, TrainConfig, load_hardware
from frugal.modelio import Manifest, count_params, save_hf
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize
from tasks import tracking
from tasks.common import Splits, Variant, stage
from tasks.data import labelled_rows
from tasks.modeling import load_pretrained, load_tokenizer, save_tokenizer
from tasks.training import TrainResult, train

log = logging.getLogger(__name__)


def train_usd(seconds: float, cfg: TrainConfig) -> float:
    return seconds / 3600 * load_hardware()[cfg.instance].usd_per_hour


def training_record(result: TrainResult, cfg: TrainConfig, total: int) -> tuple[dict, dict]:
    """The record of every training step, plus fine-tuning's time and $ (a compress step's are logged by its stage)."""
    params, metrics = result.record(total)
    return params, {**metrics, "train_seconds": result.seconds, "train_usd": train_usd(result.seconds, cfg)}


@stage(name="finetune")
def finetune(data: Splits, cfg: RunConfig, paths: ProjectPaths, run_id: str) -> Variant:
    """Fine-tune every weight, keep the checkpoint with the best val macro-F1, log it as `baseline`."""
    with tracking.nested_run(run_id, "baseline", {"method": "finetune"}) as child:
        model_dir = paths.work / "models" / child
        save_tokenizer(load_tokenizer(cfg.model), model_dir)
        model = load_pretrained(cfg.model, cfg.data.labels, cfg.seed)
        key = hashlib.sha256(f"{cfg.digest()}:{data.md5}".encode()).hexdigest()[:12]
        result = train(
            model,
            Tokenize(model_dir, cfg.model.max_length),
            labelled_rows(pd.read_parquet(data.path("train")), cfg.finetune.max_rows, cfg.seed),
            pd.read_parquet(data.path("val")),
            cfg.data.labels,
            cfg.finetune,
            cfg.seed,
            checkpoint_dir=paths.work / "checkpoints" / f"finetune-{key}",
            resume_key=key,
            desc="finetune",
        )
        total = count_params(model)
        save_hf(model, model_dir, Manifest(format="hf", labels=cfg.data.labels, max_length=cfg.model.max_length, params=total))
        params, metrics = training_record(result, cfg.finetune, total)
        tracking.log_params(child, params)
        tracking.log_metrics(child, metrics)
        tracking.log_history(child, result.history)
        tracking.log_dir(child, model_dir, "model")
        log.info("Fine-tuned in %.0f s on %s: best val macro-F1 %.4f", result.seconds, result.device, result.best_val_macro_f1)
        return Variant("baseline", child, model_dir, train_seconds=result.seconds)
