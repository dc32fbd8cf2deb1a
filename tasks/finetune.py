"""finetune: full fine-tuning of the pretrained model; the result is the fp32 `baseline` model.

A cached stage: rerunning the same data, model and fine-tuning settings reuses the model, and
a run killed mid-training resumes from its last checkpoint (kept under `.frugal/checkpoints/`,
named by the same inputs).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from frugal.config import FinetuneConfig, ModelConfig, TrainConfig, load_hardware
from frugal.modelio import Manifest, count_params, save_hf
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize
from tasks import store, tracking
from tasks.caching import digest
from tasks.common import DataRef, ModelRef, stage
from tasks.data import labelled_rows, read_split
from tasks.modeling import load_pretrained_with_notes, load_tokenizer, save_tokenizer
from tasks.training import TrainResult, train

log = logging.getLogger(__name__)
CODE = ("tasks.finetune", "tasks.training", "tasks.modeling", "tasks.data", "frugal.modelio", "frugal.runtime")


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
    data: DataRef, model: ModelConfig, train_cfg: FinetuneConfig, labels: list[str], seed: int, paths: ProjectPaths, parent_run: str
) -> ModelRef:
    """Fine-tune every weight, keep the checkpoint with the best val macro-F1, log it on a `finetune` step run."""
    splits = store.data_dir(data, paths)
    ckpt = checkpoint_dir(paths, "finetune", data.md5, model, train_cfg, labels, seed)
    with tracking.nested_run(parent_run, "finetune", {"kind": "step", "step": "finetune"}) as run_id, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model"
        save_tokenizer(load_tokenizer(model), out)
        net, notes = load_pretrained_with_notes(model, labels, seed)
        if notes:  # e.g. the checkpoint's own head had another number of labels and was replaced
            tracking.set_tags(run_id, {"notes": " ".join(notes)})
        result = train(
            net,
            Tokenize(out, model.max_length),
            labelled_rows(read_split(splits, "train"), train_cfg.max_rows, seed),
            read_split(splits, "val"),
            labels,
            train_cfg,
            seed,
            checkpoint_dir=ckpt,
            resume_key=ckpt.name,
            desc="finetune",
        )
        total = count_params(net)
        save_hf(net, out, Manifest(format="hf", labels=labels, max_length=model.max_length, params=total))
        params, metrics = training_record(result, train_cfg, total)
        tracking.log_params(run_id, params)
        tracking.log_metrics(run_id, metrics)
        tracking.log_history(run_id, result.history)
        tracking.log_dir(run_id, out, "model")
    shutil.rmtree(ckpt, ignore_errors=True)  # the model is safe in the store now
    log.info("Fine-tuned in %.0f s on %s: best val macro-F1 %.4f", result.seconds, result.device, result.best_val_macro_f1)
    return ModelRef(run_id=run_id, seconds=result.seconds)
