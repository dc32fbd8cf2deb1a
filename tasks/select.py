"""select: relative metrics, the Pareto frontier of cost vs quality, and the champion.

Champion rule: the cheapest variant (usd_per_1m) whose macro-F1 is within
`select.tolerance` (absolute) of the baseline's. The baseline always qualifies. A generative run
(task generate) trades its own pair (`Axes.of`): generate.metric (e.g. rouge_l) and usd_per_1m_tokens.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import NamedTuple

from frugal.config import RunConfig
from tasks.plumbing import tracking
from tasks.plumbing.refs import Ref, Scores, Variant
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)
TABLE_COLUMNS = (
    "macro_f1",
    "f1_retained",
    "usd_per_1m",
    "cost_ratio_vs_baseline",
    "speedup_vs_baseline",
    "latency_p50_ms",
    "throughput_per_s",
    "throughput_spread",  # (max - min) / median of the timed passes
    "length_ordering_gain",  # throughput with length-ordered batches / with arrival-order batches
    "model_size_mb",
    "params_m",
    "peak_rss_mb",
    "train_seconds",
    "train_usd",
    "trainable_share",
)
GENERATE_COLUMNS = (  # after the run's quality metric (generate.metric)
    "quality_retained",
    "usd_per_1m_tokens",
    "usd_per_1m_prompt_tokens",
    "cost_ratio_vs_baseline",
    "speedup_vs_baseline",  # output tokens/s over the baseline's
    "tokens_per_s",
    "tokens_per_s_spread",
    "prefill_tokens_per_s",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "output_tokens_mean",
    "model_size_mb",
    "params_m",
    "peak_rss_mb",
    "train_seconds",
    "train_usd",
    "trainable_share",
)
LABELS = {
    "macro_f1": "macro-F1", "rouge_l": "ROUGE-L", "exact_match": "exact match", "field_f1": "field-level F1",
    "usd_per_1m": "USD per 1M predictions", "usd_per_1m_tokens": "USD per 1M output tokens",
}  # fmt: skip


class Axes(NamedTuple):
    """The two metrics the champion rule trades, by name: quality (higher is better) and cost (lower is better)."""

    quality: str = "macro_f1"
    cost: str = "usd_per_1m"

    @classmethod
    def of(cls, cfg: RunConfig) -> Axes:
        return cls(cfg.quality_metric, cfg.cost_metric)

    @property
    def columns(self) -> tuple[str, ...]:
        return TABLE_COLUMNS if self == CLASSIFY else (self.quality, *GENERATE_COLUMNS)


CLASSIFY = Axes()


class Selection(Ref):
    champion: Scores
    baseline: Scores
    frontier: tuple[str, ...]
    table_md: str


def pareto_front(scores: list[Scores], axes: Axes = CLASSIFY) -> list[str]:
    """Variants no other variant beats on both cost (lower) and quality (higher), cheapest first."""
    q, c = axes

    def dominated(s: Scores) -> bool:
        return any(
            o.metrics[c] <= s.metrics[c] and o.metrics[q] >= s.metrics[q] and (o.metrics[c] < s.metrics[c] or o.metrics[q] > s.metrics[q])
            for o in scores
        )

    return [s.variant for s in sorted(scores, key=lambda s: s.metrics[c]) if not dominated(s)]


def choose(scores: list[Scores], baseline: Scores, tolerance: float, axes: Axes = CLASSIFY) -> Scores:
    floor = baseline.metrics[axes.quality] - tolerance
    good_enough = [s for s in scores if s.metrics[axes.quality] >= floor]
    return min(good_enough, key=lambda s: (s.metrics[axes.cost], -s.metrics[axes.quality]))


def table(scores: list[Scores], variants: list[Variant], frontier: list[str], champion: str, axes: Axes = CLASSIFY) -> str:
    columns = axes.columns
    header = "| variant | status | " + " | ".join(columns) + " |"
    rows = [header, "|" + "---|" * (len(columns) + 2)]
    for s in sorted(scores, key=lambda s: s.metrics[axes.cost]):
        marks = ("champion " if s.variant == champion else "") + ("frontier" if s.variant in frontier else "")
        cells = [_fmt(s.metrics.get(c)) for c in columns]
        rows.append(f"| {s.variant} | ok {marks.strip()} | " + " | ".join(cells) + " |")
    for v in variants:
        if v.status != "ok":
            rows.append(f"| {v.name} | {v.status}: {v.reason} |" + " |" * len(columns))
    return "\n".join(rows) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def frontier_png(
    scores: list[Scores], frontier: list[str], champion: str, tolerance_floor: float, out: Path, axes: Axes = CLASSIFY
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, c = axes
    quality = LABELS.get(q, q)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in scores:
        on_front = s.variant in frontier
        ax.scatter(
            s.metrics[c],
            s.metrics[q],
            s=70 if on_front else 35,
            c="tab:red" if s.variant == champion else ("tab:blue" if on_front else "tab:gray"),
        )
        ax.annotate(s.variant, (s.metrics[c], s.metrics[q]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((s for s in scores if s.variant in frontier), key=lambda s: s.metrics[c])
    ax.plot([s.metrics[c] for s in front], [s.metrics[q] for s in front], "--", c="tab:blue", lw=1, label="Pareto frontier")
    ax.axhline(tolerance_floor, c="tab:red", lw=0.8, ls=":", label=f"baseline {quality} - tolerance")
    ax.set_xscale("log")
    ax.set_xlabel(f"{LABELS.get(c, c)} (log)")
    ax.set_ylabel(f"{quality} (test)")
    ax.set_title("Cost vs quality (champion in red)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@stage(name="select")
def select(scores: list[Scores], variants: list[Variant], cfg: RunConfig, parent_run: str) -> Selection:
    """The Pareto frontier, the champion, and the comparison table and plot on the parent run."""
    axes = Axes.of(cfg)
    baseline = next(s for s in scores if s.variant == "baseline")
    frontier = pareto_front(scores, axes)
    champion = choose(scores, baseline, cfg.select.tolerance, axes)
    md = table(scores, variants, frontier, champion.variant, axes)
    tracking.log_text(parent_run, md, "comparison.md")
    with tempfile.TemporaryDirectory() as tmp:
        floor = baseline.metrics[axes.quality] - cfg.select.tolerance
        png = Path(tmp) / "pareto_frontier.png"
        tracking.log_file(parent_run, frontier_png(scores, frontier, champion.variant, floor, png, axes))
    tracking.set_tags(parent_run, {"champion_variant": champion.variant, "pareto_frontier": ",".join(frontier)})
    tracking.log_metrics(parent_run, {f"champion_{k}": v for k, v in champion.metrics.items()})
    log.info("Champion: %s\n%s", champion.variant, md)
    return Selection(champion=champion, baseline=baseline, frontier=tuple(frontier), table_md=md)
