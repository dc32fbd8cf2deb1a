"""What server and clients share: the run spec, the LoRA model, local training, val macro-F1, payload sizes.

The base model (pretrained weights plus the seeded classifier head) is saved by the pipeline into
`spec.model_dir` before the run, so every client and the server start from identical weights and only
the LoRA adapters and the head (peft's modules_to_save) have to travel.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch


@dataclass(frozen=True)
class Spec:
    """The run's settings, written as JSON by the pipeline (tasks/federated.py `write_spec`)."""

    model_dir: str
    tokenizer_dir: str  # the model folder's tokenizer/ (frugal's layout): from model_dir itself it would map every word to [UNK]
    train_file: str
    val_file: str
    out_dir: str
    labels: list[str]
    max_length: int
    clients: int
    clients_per_round: int
    partition_by: str | None
    rounds: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    threads: int
    seed: int
    round_timeout_seconds: int
    lora: dict[str, Any]

    @classmethod
    def load(cls, path: str) -> Spec:
        return cls(**json.loads(Path(path).read_text()))


def load_model(spec: Spec):  # -> (peft.PeftModel, tokenizer)
    """The base model with fresh LoRA adapters (their initial values come from the server in round 1)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    base = AutoModelForSequenceClassification.from_pretrained(spec.model_dir)
    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=spec.lora["r"], lora_alpha=spec.lora["alpha"],
                      lora_dropout=spec.lora["dropout"], target_modules=spec.lora["target_modules"])  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_dir)
    if tokenizer.vocab_size <= len(tokenizer.all_special_tokens):  # a folder without a vocabulary still loads, as all [UNK]
        raise RuntimeError(f"The tokenizer in {spec.tokenizer_dir} has no vocabulary ({tokenizer.vocab_size} tokens)")
    return get_peft_model(base, lora), tokenizer


def adapter_state(net) -> dict[str, torch.Tensor]:
    """Only what trains: the LoRA matrices and the classifier head; the frozen base never leaves."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(net).items()}


def set_adapter_state(net, state: dict[str, torch.Tensor]) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(net, state)


def _batches(tokenizer, texts: list[str], max_length: int, size: int):
    for start in range(0, len(texts), size):
        yield start, tokenizer(texts[start : start + size], truncation=True, max_length=max_length, padding=True, return_tensors="pt")


def class_ids(frame: pd.DataFrame, spec: Spec) -> np.ndarray:
    """Each row's index in `spec.labels` (tasks.data.label_ids, which this environment cannot import)."""
    return np.array(frame["label"].map({label: i for i, label in enumerate(spec.labels)}), dtype=np.int64)  # writable, for torch


def train_local(net, tokenizer, frame: pd.DataFrame, spec: Spec, seed: int) -> float:
    """`spec.local_epochs` passes of AdamW over this client's rows; the mean loss of the last epoch."""
    ids = torch.from_numpy(class_ids(frame, spec))
    texts = frame["text"].tolist()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=spec.learning_rate, weight_decay=spec.weight_decay)
    generator = np.random.default_rng(seed)
    net.train()
    loss_sum, steps = 0.0, 0
    for _ in range(spec.local_epochs):
        order = generator.permutation(len(texts))
        shuffled = [texts[i] for i in order]
        loss_sum, steps = 0.0, 0
        for start, batch in _batches(tokenizer, shuffled, spec.max_length, spec.batch_size):
            labels = ids[order[start : start + spec.batch_size]]
            loss = net(**batch, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            loss_sum, steps = loss_sum + float(loss), steps + 1
    return loss_sum / max(steps, 1)


@torch.no_grad()
def macro_f1(net, tokenizer, frame: pd.DataFrame, spec: Spec) -> float:
    """Macro-F1 over `spec.labels` (as sklearn's f1_score(average='macro'), which the Flower environment does not have)."""
    net.eval()
    preds = []
    for _, batch in _batches(tokenizer, frame["text"].tolist(), spec.max_length, 64):
        preds.append(net(**batch).logits.argmax(-1).numpy())
    pred = np.concatenate(preds)
    truth = class_ids(frame, spec)
    scores = []
    for k in range(len(spec.labels)):
        tp, fp, fn = np.sum((pred == k) & (truth == k)), np.sum((pred == k) & (truth != k)), np.sum((pred != k) & (truth == k))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


class BestRound:
    """The averaged adapters of the round with the highest val macro-F1 (the earliest on a tie).

    They are the federated baseline, as central training keeps its best val check rather than its last step.
    """

    def __init__(self) -> None:
        self.round, self.f1, self.state = 0, float("-inf"), None

    def offer(self, server_round: int, f1: float, state: dict[str, torch.Tensor]) -> None:
        if server_round >= 1 and f1 > self.f1:  # round 0 scores the untrained start, never a candidate
            self.round, self.f1, self.state = server_round, f1, {k: v.detach().clone() for k, v in state.items()}


def payload(record) -> dict[str, Any]:
    """What an ArrayRecord puts on the wire: its keys, the serialized bytes (Array.data) and the raw tensor bytes."""
    return {
        "keys": sorted(record.keys()),
        "wire_bytes": int(sum(len(array.data) for array in record.values())),
        "tensor_bytes": int(sum(array.numpy().nbytes for array in record.values())),
    }


def tensor_bytes(state: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in state.values()))


def write_json(path: Path, value: Any) -> None:
    """Written whole or not at all: the pipeline reads these files only once the run has ended."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start
