"""The transformers generative formats: ``causal-hf`` and ``causal-speculative``; their generator, save and load.

- ``causal-hf``: what ``save_pretrained`` writes for a causal LM (``config.json``, ``model.safetensors``,
  ``generation_config.json``), plus ``tokenizer/`` and ``frugal.json`` (task "generate"; notes ``chat`` and
  ``eos_token_ids``). ``AutoModelForCausalLM.from_pretrained`` loads the folder as it is.
- ``causal-speculative``: ``target/`` and ``draft/`` (each a ``causal-hf`` folder), ``tokenizer/`` (the target's) and
  ``frugal.json``. transformers' assisted generation: the draft proposes tokens, the target checks them all in one pass
  and keeps the longest prefix it agrees with, so the greedy output is the target's, token for token.

Both decode with transformers' own ``model.generate(..., do_sample=False)``, not a loop of frugal's: the goal's baseline
is "the fine-tuned model generating with plain transformers generate", so what is measured here is exactly that (the
only additions are a streamer and a logits processor that reads, never changes, the scores). ``generate`` runs in a
thread so that tokens stream as they come (time to first token is then real). torch and transformers are imported
inside the functions: the registry reads this module without them.
"""

from __future__ import annotations

import hashlib
import json
import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frugal.errors import ModelError
from frugal.runtime.generator import Generator
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest, copy_tokenizer
from frugal.runtime.registry import Format, register

if TYPE_CHECKING:
    import torch

CAUSAL = ("torch", "transformers", "safetensors", "tokenizers", "jinja2")
TARGET, DRAFT = "target", "draft"
_DONE = object()


def load_causal(model_dir: Path, dtype: str = "float32", device: str = "cpu") -> torch.nn.Module:
    """A ``causal-hf`` folder as an eval-mode transformers causal LM."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # generation_config's sampling settings warn under do_sample=False: not our concern
    model = AutoModelForCausalLM.from_pretrained(Path(model_dir), dtype=getattr(torch, dtype))
    return model.to(device).eval()


def save_causal(model: torch.nn.Module, dst: Path, manifest: Manifest) -> None:
    """``save_pretrained`` (config, safetensors weights, generation config) and the manifest; the caller copies tokenizer/."""
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dst)
    manifest.save(dst)


class _Recorder:
    """Streamer and logits processor in one: the log-probability of each position's top score, and each accepted token.

    Assisted generation scores every drafted position, rejected ones included, so a log-probability is kept per position
    (the length of the ids it was computed on) and read when that position's token is accepted: by then the latest
    scores of that position were computed on the accepted prefix."""

    def __init__(self, prompt_len: int) -> None:
        self.logprobs: dict[int, float] = {}
        self.out: queue.Queue[Any] = queue.Queue()
        self.position = prompt_len
        self.prompt_seen = False
        self.stop = threading.Event()

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:  # LogitsProcessor
        row = scores[0].float()
        self.logprobs[input_ids.shape[1]] = float(row.max() - row.logsumexp(-1))
        return scores

    def put(self, value: torch.Tensor) -> None:  # BaseStreamer: first the prompt, then each step's accepted tokens
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.out.put((int(token), self.logprobs[self.position]))
            self.position += 1

    def end(self) -> None:
        self.out.put(_DONE)


def stream_generate(model: Any, ids: list[int], max_new_tokens: int, eos_ids: set[int], threads: int | None,
                    **kwargs: Any) -> Iterator[tuple[int, float]]:  # fmt: skip
    """``model.generate`` (greedy, batch 1, kwargs such as ``assistant_model``) in a thread: each token and its log-prob."""
    import torch
    from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    recorder = _Recorder(len(ids))

    class _Abandoned(StoppingCriteria):  # the caller stopped reading: end generate at the next step
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), recorder.stop.is_set(), dtype=torch.bool)

    inputs = torch.tensor([ids], dtype=torch.long, device=model.device)
    eos = sorted(eos_ids)
    extra = {"eos_token_id": eos, "pad_token_id": eos[0]} if eos else {}

    def run() -> None:
        try:
            if threads:
                torch.set_num_threads(threads)  # the thread count is set per thread (OpenMP)
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=False,
                           streamer=recorder, logits_processor=LogitsProcessorList([recorder]),
                           stopping_criteria=StoppingCriteriaList([_Abandoned()]), **extra, **kwargs)  # fmt: skip
        except BaseException as error:  # handed to the reading thread, which raises it
            recorder.out.put(error)
            recorder.out.put(_DONE)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        while (item := recorder.out.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        recorder.stop.set()
        worker.join()


class CausalGenerator(Generator):
    """A ``causal-hf`` folder decoding greedily with transformers' ``generate``."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import torch

        super().__init__(model_dir, manifest)
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.model = load_causal(model_dir, manifest.dtype, device)

    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        return stream_generate(self.model, ids, max_new_tokens, self.eos_ids, self.threads)


# -- speculative decoding ------------------------------------------------------------------------------------------------
def tokenizer_fingerprint(model_dir: Path) -> str:
    """A hash of what maps text to ids: the tokenizer.json model (vocab, merges) and its added tokens."""
    data = json.loads((Path(model_dir) / TOKENIZER_DIR / "tokenizer.json").read_text())
    keyed = {"model": data.get("model"), "added": [(t.get("id"), t.get("content")) for t in data.get("added_tokens", [])]}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def check_same_tokenizer(target_dir: Path, draft_dir: Path) -> None:
    """Assisted generation compares token ids: a draft with another vocabulary would propose meaningless ids."""
    if tokenizer_fingerprint(target_dir) != tokenizer_fingerprint(draft_dir):
        raise ModelError(
            f"The speculative draft {draft_dir} has a different tokenizer from its target {target_dir}: the draft's token "
            "ids would mean other text to the target.",
            "Use a draft made from the target (layer_drop or a distilled student of it), or one trained with the same tokenizer.",
        )


def assemble_speculative(target_dir: Path, draft_dir: Path, dst: Path, manifest: Manifest) -> None:
    """Write a ``causal-speculative`` folder from two ``causal-hf`` folders (checked first: nothing written on a mismatch)."""
    check_same_tokenizer(target_dir, draft_dir)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copytree(target_dir, dst / TARGET, dirs_exist_ok=True)
    shutil.copytree(draft_dir, dst / DRAFT, dirs_exist_ok=True)
    copy_tokenizer(target_dir, dst)
    manifest.save(dst)


class SpeculativeGenerator(Generator):
    """The target decodes greedily with the draft as its assistant (transformers assisted generation, batch 1)."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import torch

        super().__init__(model_dir, manifest)
        check_same_tokenizer(self.model_dir / TARGET, self.model_dir / DRAFT)
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.target = load_causal(self.model_dir / TARGET, Manifest.load(self.model_dir / TARGET).dtype, device)
        self.draft = load_causal(self.model_dir / DRAFT, Manifest.load(self.model_dir / DRAFT).dtype, device)
        if "num_assistant_tokens" in manifest.notes:  # else transformers' default schedule (adapts to the acceptance rate)
            self.draft.generation_config.num_assistant_tokens = int(manifest.notes["num_assistant_tokens"])

    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        return stream_generate(self.target, ids, max_new_tokens, self.eos_ids, self.threads, assistant_model=self.draft)


register(Format("causal-hf", "transformers causal LM: save_pretrained files + tokenizer/", CausalGenerator, save_causal, CAUSAL,
                standard="transformers"))  # fmt: skip
register(Format("causal-speculative", "target/ and draft/ causal-hf folders: assisted generation (frugal's own)", SpeculativeGenerator,
                None, CAUSAL, standard=None, parts=lambda folder: [folder / TARGET, folder / DRAFT]))  # fmt: skip
