"""Speculative decoding: the step's input (a distilled student, e.g. from layer_drop) drafts, the fine-tuned model decides.

The result is a ``causal-speculative`` folder (frugal/runtime/formats/causal.py): the fine-tuned baseline as ``target/``
and this step's input as ``draft/``. transformers' assisted generation keeps only the draft tokens the target itself would
have picked, so greedy outputs are the target's by construction and the cost cut is fewer target passes per token. The
step checks both on a few val prompts: the pair's tokens against the target's alone, and the passes each model made.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from frugal.errors import ConfigError
from frugal.runtime.formats.causal import SpeculativeGenerator, assemble_speculative, check_same_tokenizer, stream_generate
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import load_generator
from ml.compress.base import CompressContext, Method, MethodOptions, StepReport, register

FORMAT = "causal-speculative"
CHECK_NEW_TOKENS = 32  # new tokens per checked prompt when the step has no generate settings


class SpeculativeOptions(MethodOptions):
    num_assistant_tokens: int | None = Field(
        None, ge=1, description="Most tokens the draft proposes before each target pass (it also stops at a token it is under "
        "40 % sure of: transformers' assistant_confidence_threshold); null = transformers' default, 20."
    )  # fmt: skip
    check_tokens: int = Field(
        4, ge=0, description="Val prompts on which the pair's greedy tokens are compared with the target's alone, token for "
        "token, and its target passes per token counted (recorded on the step run); 0 = no check."
    )  # fmt: skip


@register
class Speculative(Method):
    name = "speculative"
    Options = SpeculativeOptions
    accepts = ("causal-hf",)
    produces = (FORMAT,)

    def apply(self, src: Path, dst: Path, ctx: CompressContext) -> StepReport:
        opts: SpeculativeOptions = self.options
        draft = self.source(src)
        target_dir = self._target(ctx)
        check_same_tokenizer(target_dir, src)  # before anything is written: one error naming the problem and the fix
        target = Manifest.load(target_dir)
        notes = {**target.notes, **({"num_assistant_tokens": opts.num_assistant_tokens} if opts.num_assistant_tokens else {})}
        manifest = target.derive(format=FORMAT, params=target.params + draft.params, lineage=[*draft.lineage, self.name], notes=notes)
        assemble_speculative(target_dir, src, dst, manifest)
        report = StepReport(params={"draft_params": draft.params, "target_params": target.params,
                                    "draft_lineage": " > ".join(draft.lineage)})  # fmt: skip
        if opts.check_tokens:
            prompts = list(pd.read_parquet(ctx.data / "val.parquet")["prompt"].iloc[: opts.check_tokens])
            max_new = ctx.generate.max_new_tokens if ctx.generate else CHECK_NEW_TOKENS
            check = check_pair(dst, prompts, max_new, ctx.serve_threads)
            report.metrics.update(check.metrics())
            report.notes.append(check.note())
        return report

    def _target(self, ctx: CompressContext) -> Path:
        """The fine-tuned model folder (the target), which must be a causal-hf folder."""
        if ctx.baseline is None:
            raise ConfigError("speculative needs the fine-tuned model as its target, but this step was given none.",
                              "Use speculative in a compress chain of a task: generate config, after a draft step: "
                              "[{method: layer_drop, keep_layers: N}, {method: speculative}].")  # fmt: skip
        fmt = Manifest.load(ctx.baseline).format
        if fmt != "causal-hf":
            raise ConfigError(f"speculative's target (the fine-tuned model) is a {fmt!r} folder; assisted generation needs causal-hf.",
                              "Fine-tune with task: generate, which saves the baseline as causal-hf.")  # fmt: skip
        return ctx.baseline


@dataclass
class PairCheck:
    """The pair against its target alone on some prompts: identical greedy tokens, and each model's forward passes."""

    prompts: int = 0
    identical: int = 0  # prompts whose tokens were the target's alone, token for token
    first_difference: tuple[int, int] | None = None  # (prompt, token index) of the first mismatch
    tokens: int = 0  # tokens the pair generated
    target_passes: int = 0
    draft_passes: int = 0
    plain_passes: int = 0  # the target's passes alone (one per token: the reference)

    def add(self, prompt: int, plain: list[int], assisted: list[int], target_passes: int, draft_passes: int) -> None:
        """One prompt's tokens, the target's alone and the pair's, and the pair's passes."""
        self.prompts, self.tokens = self.prompts + 1, self.tokens + len(assisted)
        self.target_passes, self.draft_passes = self.target_passes + target_passes, self.draft_passes + draft_passes
        if assisted == plain:
            self.identical += 1
        elif self.first_difference is None:
            same = next((k for k, (a, b) in enumerate(zip(assisted, plain, strict=False)) if a != b), min(len(assisted), len(plain)))
            self.first_difference = (prompt, same)

    def metrics(self) -> dict[str, float]:
        per_token = self.target_passes / max(self.tokens, 1)
        return {"greedy_identical": float(self.identical == self.prompts), "greedy_identical_share": self.identical / max(self.prompts, 1),
                "target_passes_per_token": per_token, "tokens_per_target_pass": 1 / per_token if per_token else 0.0,
                "draft_passes_per_token": self.draft_passes / max(self.tokens, 1),
                "plain_passes_per_token": self.plain_passes / max(self.tokens, 1)}  # fmt: skip

    def note(self) -> str:
        passes = f"{self.target_passes / max(self.tokens, 1):.2f} target passes per token (plain greedy: 1)"
        if self.identical == self.prompts:
            return f"Greedy output identical to the target's alone on {self.prompts} val prompts; {passes}."
        prompt, token = self.first_difference or (0, 0)
        return (f"Greedy output differed from the target's alone on {self.prompts - self.identical} of {self.prompts} val prompts "
                f"(first: prompt {prompt}, token {token}: float rounding between one-token and multi-token target passes can "
                f"flip a near-tie); {passes}.")  # fmt: skip


def check_pair(model_dir: Path, prompts: list[str], max_new_tokens: int, threads: int | None) -> PairCheck:
    """Generate each prompt with the saved pair and with its target alone (the same loaded target), counting passes."""
    pair = load_generator(model_dir, threads=threads)
    if not isinstance(pair, SpeculativeGenerator):
        raise TypeError(f"{model_dir} did not load as a target + draft pair")
    counts = {"target": 0, "draft": 0}
    hooks = [_count(pair.target, counts, "target"), _count(pair.draft, counts, "draft")]
    check = PairCheck()
    try:
        for i, prompt in enumerate(prompts):
            ids = pair.encode(prompt, max_new_tokens)
            plain = [t for t, _ in stream_generate(pair.target, ids, max_new_tokens, pair.eos_ids, threads)]
            check.plain_passes, counts["target"] = check.plain_passes + counts["target"], 0
            assisted = [t for t, _ in pair.stream_ids(ids, max_new_tokens)]
            check.add(i, plain, assisted, counts["target"], counts["draft"])
            counts.update(target=0, draft=0)
    finally:
        for hook in hooks:
            hook.remove()
    return check


def _count(model: Any, counts: dict[str, int], key: str) -> Any:
    """A forward hook that counts `model`'s forward passes (each one reads every weight: the cost speculative decoding cuts)."""

    def hook(*_: Any) -> None:
        counts[key] += 1

    return model.register_forward_hook(hook)
