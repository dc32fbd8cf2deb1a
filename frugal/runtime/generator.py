"""What every generative format shares: the prompt (chat template), its token budget, streaming, and what one answer cost.

A generative model folder (``Manifest.task == "generate"``) loads as a ``Generator`` (frugal/runtime/registry.py
``load_generator``). Evaluation, the cascade and ``frugal serve``'s /v1/chat/completions all generate through it, so what
is measured is what ships. Decoding is greedy. Like the rest of the runtime this is a leaf: numpy, tokenizers and jinja2
(the chat template, rendered as transformers renders it), plus each format's own runtime.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from frugal.runtime.manifest import TOKENIZER_DIR, Manifest

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class PromptError(ValueError):
    """A request the model cannot take as it is (too long for its context, chat asked of a model without a chat template)."""

    def __init__(self, problem: str, fix: str, status: int = 422) -> None:
        super().__init__(f"{problem} {fix}")
        self.problem, self.fix, self.status = problem, fix, status


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # the piece this token adds to the decoded text (incremental decoding: bytes of a character may span tokens)
    logprob: float  # log-probability the model gave it (greedy: the top one)


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: Literal["stop", "length"]  # stop: end of sequence; length: max_new_tokens reached
    mean_logprob: float  # mean log-probability of the generated tokens: the cascade's confidence
    first_token_s: float  # time to first token (prefill + one decode step)
    seconds: float  # the whole generation


class Generator(ABC):
    """Greedy text generation from one model folder. Subclasses implement `stream_ids` (token ids in, tokens out)."""

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir)
        self.manifest = manifest
        self.context_length = manifest.max_length
        tok_dir = self.model_dir / TOKENIZER_DIR
        self.tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self.chat_template, self.special = _chat_template(tok_dir)
        self.eos_ids: set[int] = set(manifest.notes.get("eos_token_ids", []))

    # -- prompts -----------------------------------------------------------------------------------------------------
    @property
    def chat(self) -> bool:
        """Prompts go through the chat template (the manifest records how the model was fine-tuned)."""
        return bool(self.manifest.notes.get("chat", False))

    def render(self, prompt: str | Sequence[Message]) -> str:
        """The text the model sees: messages through the chat template, or a plain prompt (a string) as written."""
        if isinstance(prompt, str):
            if not self.chat:
                return prompt
            prompt = [{"role": "user", "content": prompt}]
        if self.chat_template is None:
            raise PromptError(
                "This model's tokenizer has no chat template, so chat messages cannot be turned into a prompt.",
                "Send a plain prompt to /v1/completions, or fine-tune with generate.chat: false.",
            )
        return render_chat(self.chat_template, list(prompt), self.special)

    def encode(self, prompt: str | Sequence[Message], max_new_tokens: int) -> list[int]:
        """Token ids of the rendered prompt; a PromptError when prompt + max_new_tokens exceed the context."""
        ids = self.tokenizer.encode(self.render(prompt), add_special_tokens=False).ids
        if len(ids) + max_new_tokens > self.context_length:
            raise PromptError(
                f"The prompt is {len(ids)} tokens; with max_tokens {max_new_tokens} that is more than this model's context of "
                f"{self.context_length} tokens.",
                "Shorten the prompt or ask for fewer new tokens.",
                status=413,
            )
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    # -- decoding ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        """Greedy decoding of `ids`: each new token id and its log-probability, ending at end of sequence (yielded) or the budget."""

    def stream(self, prompt: str | Sequence[Message], max_new_tokens: int) -> Iterator[Token]:
        """The generated tokens as they come, each with the text it adds (end-of-sequence tokens add none)."""
        ids = self.encode(prompt, max_new_tokens)
        out: list[int] = []
        shown = ""
        for token_id, logprob in self.stream_ids(ids, max_new_tokens):
            if token_id in self.eos_ids:
                yield Token(token_id, "", logprob)
                return
            out.append(token_id)
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            piece = text[len(shown) :] if not text.endswith("\ufffd") else ""  # a half character waits for its next byte
            shown += piece
            yield Token(token_id, piece, logprob)

    def generate(self, prompt: str | Sequence[Message], max_new_tokens: int) -> Generation:
        start = time.perf_counter()
        prompt_tokens = len(self.encode(prompt, max_new_tokens))
        first = None
        tokens: list[Token] = []
        for token in self.stream(prompt, max_new_tokens):
            first = first if first is not None else time.perf_counter() - start
            tokens.append(token)
        stopped = bool(tokens) and tokens[-1].id in self.eos_ids
        logprobs = [t.logprob for t in tokens]
        return Generation(
            text="".join(t.text for t in tokens).strip(),
            prompt_tokens=prompt_tokens,
            output_tokens=len(tokens),
            finish_reason="stop" if stopped else "length",
            mean_logprob=sum(logprobs) / len(logprobs) if logprobs else 0.0,
            first_token_s=first if first is not None else 0.0,
            seconds=time.perf_counter() - start,
        )


def _chat_template(tok_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The tokenizer's chat template (chat_template.jinja or tokenizer_config.json) and its special tokens."""
    config = json.loads((tok_dir / "tokenizer_config.json").read_text()) if (tok_dir / "tokenizer_config.json").is_file() else {}
    special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
    path = tok_dir / "chat_template.jinja"
    template = path.read_text() if path.is_file() else config.get("chat_template")
    return (template if isinstance(template, str) else None), special


def render_chat(template: str, messages: list[Message], special: dict[str, Any]) -> str:
    """Render a chat template the way transformers does (a sandboxed jinja2 environment, trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template).render(messages=messages, add_generation_prompt=True, **special)


def _raise(message: str) -> None:
    raise PromptError(f"The chat template refused the messages: {message}", "Send the roles the model's template accepts.")
