"""Prompt/response pairs as causal-LM training rows: token ids, and labels that score the response only.

The prompt is rendered exactly as serving renders it (frugal/runtime/generator.py `Generator.render`: the chat template
with the assistant's header when `chat`, else the prompt as written; encoded without added special tokens), then the
response and end of sequence follow. So what is trained is what serving prompts, and the model learns to stop.
Labels are the input ids where the model is scored and IGNORE (-100, which cross-entropy skips) over the prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from frugal.errors import ModelError
from frugal.runtime.generator import render_chat

if TYPE_CHECKING:
    import torch

IGNORE = -100  # the label of a position that is not scored (prompt, padding)


def render_prompt(tokenizer: Any, prompt: str, chat: bool) -> str:
    """The text the model sees before its answer: as `Generator.render` builds it from the saved tokenizer folder."""
    if not chat:
        return prompt
    check_chat(tokenizer, chat)
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    return render_chat(tokenizer.chat_template, [{"role": "user", "content": prompt}], special)


def check_chat(tokenizer: Any, chat: bool) -> None:
    """One ModelError when chat is asked of a tokenizer without a chat template (raised before anything trains)."""
    if chat and not isinstance(getattr(tokenizer, "chat_template", None), str):
        raise ModelError(
            "generate.chat is true, but the model's tokenizer has no chat template to wrap prompts in.",
            "Set generate.chat: false (prompts as written), or use a model whose tokenizer has a chat template.",
        )


def encode_pair(tokenizer: Any, prompt: str, response: str, chat: bool, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one pair: the prompt's ids, then the response's and end of sequence; labels IGNORE the prompt.

    Longer than `max_length` is cut at the end (data cleaning drops over-long rows first: this only guards the context).
    """
    eos = eos_token_id(tokenizer)
    prompt_ids = tokenizer.encode(render_prompt(tokenizer, prompt, chat), add_special_tokens=False)
    response_ids = tokenizer.encode(response, add_special_tokens=False) + [eos]
    ids = (prompt_ids + response_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + response_ids)[:max_length]
    return ids, labels


def eos_token_id(tokenizer: Any) -> int:
    if tokenizer.eos_token_id is None:
        raise ModelError(
            "The model's tokenizer has no end-of-sequence token, so a fine-tuned model could not learn where to stop.",
            "Use a causal LM whose tokenizer defines eos_token.",
        )
    return int(tokenizer.eos_token_id)


def pad_token_id(tokenizer: Any) -> int:
    """The id padding uses (never scored nor attended): the tokenizer's pad token, else end of sequence."""
    return int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else eos_token_id(tokenizer)


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors of a batch: input_ids, attention_mask (0 on padding) and labels (IGNORE on padding)."""
    import torch

    width = max(len(ids) for ids, _ in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (ids, target) in enumerate(pairs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(target)] = torch.tensor(target, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def response_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the scored positions: the logits at t predict the label at t + 1."""
    import torch

    shifted = labels[:, 1:].reshape(-1)
    summed = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)).float(), shifted, ignore_index=IGNORE, reduction="sum"
    )
    return summed / (shifted != IGNORE).sum().clamp(min=1)  # a batch with nothing scored: 0, not NaN
