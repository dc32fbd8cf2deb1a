"""What one answered request adds to its month's bill: texts at the plan's price per 1k, or a generation's tokens at its
prices per 1M (prompt and completion tokens priced separately, as the issue's usd_per_1m_tokens is per output token)."""

from __future__ import annotations

from dataclasses import dataclass

from frugal.config.serve import Plan

BILL = ("cost_usd", "billed_usd", "prompt_tokens", "completion_tokens", "tokens")  # the monthly_usage columns a bill adds to


@dataclass(frozen=True)
class TokenUse:
    """A generation's tokens: what it used, and what admission took for it (prompt + max_tokens)."""

    prompt: int
    completion: int
    reserved: int


def bill_of(cost_usd: float, n_texts: int, tokens: TokenUse | None, plan: Plan | None) -> dict[str, float]:
    """The amounts to add per BILL column. A generation also gives back to the quota the tokens admission took beyond those
    it used (a negative `tokens`): the quota then counts what was used, and it was never overrun meanwhile."""
    if tokens is None:
        return {"cost_usd": cost_usd, "billed_usd": (plan.usd_per_1k_texts if plan else 0.0) * n_texts / 1000}
    price = (tokens.prompt * plan.usd_per_1m_prompt_tokens + tokens.completion * plan.usd_per_1m_tokens) / 1e6 if plan else 0.0
    used = tokens.prompt + tokens.completion
    return {"cost_usd": cost_usd, "billed_usd": price, "prompt_tokens": tokens.prompt, "completion_tokens": tokens.completion,
            "tokens": used - tokens.reserved}  # fmt: skip
