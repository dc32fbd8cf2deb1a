"""Terminal tables for `frugal keys list` and `frugal usage`."""

from __future__ import annotations

from datetime import datetime

from frugal.accounts.store import KeyInfo, UsageRow


def keys_table(keys: list[KeyInfo]) -> str:
    if not keys:
        return "No API keys yet. Create one: frugal keys create --name NAME --plan PLAN"
    rows = [[k.key_id, k.name, k.plan, _time(k.created_at), _time(k.revoked_at) if k.revoked_at else "-"] for k in keys]
    return _table(["key_id", "name", "plan", "created (UTC)", "revoked (UTC)"], rows, numeric=0)


def usage_table(rows: list[UsageRow], month: str) -> str:
    if not rows:
        return f"No usage in {month}."
    # The token columns last: a generative model's (prompt and completion tokens are priced separately).
    body = [[r.key_id, r.name, r.plan, str(r.requests), str(r.texts), _usd(r.cost_usd), _usd(r.billed_usd), _usd(r.margin_usd),
             str(r.prompt_tokens), str(r.completion_tokens)] for r in rows]  # fmt: skip
    total = ["total", "", "", *(str(sum(getattr(r, f) for r in rows)) for f in ("requests", "texts")),
             *(_usd(sum(getattr(r, f) for r in rows)) for f in ("cost_usd", "billed_usd", "margin_usd")),
             *(str(sum(getattr(r, f) for r in rows)) for f in ("prompt_tokens", "completion_tokens"))]  # fmt: skip
    header = ["key_id", "name", "plan", "requests", "texts", "cost $", "billed $", "margin $", "prompt tokens", "completion tokens"]
    why = "billed = plan price x texts / 1000 + prompt and completion tokens x their prices per 1M / 1e6"
    return f"Usage in {month} (UTC); cost = our compute, {why}, margin = billed - cost.\n" + _table(header, [*body, total], numeric=7)


def _table(header: list[str], rows: list[list[str]], numeric: int) -> str:
    """Aligned columns; the last `numeric` columns right-aligned."""
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    first_numeric = len(header) - numeric

    def render(line: list[str]) -> str:
        cells = (v.rjust(w) if i >= first_numeric else v.ljust(w) for i, (v, w) in enumerate(zip(line, widths, strict=True)))
        return "  ".join(cells).rstrip()

    return "\n".join([render(header), "  ".join("-" * w for w in widths), *map(render, rows)])


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M")


def _usd(amount: float) -> str:
    return f"{amount:.6f}"
