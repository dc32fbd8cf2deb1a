"""select: relative metrics, the Pareto frontier of cost vs quality, and the champion.

Champion rule: the cheapest variant (usd_per_1m) whose macro-F1 is within
`select.tolerance` (absolute) of the baseline's. The baseline always qualifies.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

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


class Selection(Ref):
    champion: Scores
    baseline: Scores
    frontier: tuple[str, ...]
    table_md: str


def pareto_front(scores: list[Scores]) -> list[str]:
    """Variants no other variant beats on both cost (lower) and macro-F1 (higher), cheapest first."""

    def dominated(s: Scores) -> bool:
        return any(
            o.metrics["usd_per_1m"] <= s.metrics["usd_per_1m"]
            and o.metrics["macro_f1"] >= s.metrics["macro_f1"]
            and (o.metrics["usd_per_1m"] < s.metrics["usd_per_1m"] or o.metrics["macro_f1"] > s.metrics["macro_f1"])
            for o in scores
        )

    return [s.variant for s in sorted(scores, key=lambda s: s.metrics["usd_per_1m"]) if not dominated(s)]


def choose(scores: list[Scores], baseline: Scores, tolerance: float) -> Scores:
    floor = baseline.metrics["macro_f1"] - tolerance
    good_enough = [s for s in scores if s.metrics["macro_f1"] >= floor]
    return min(good_enough, key=lambda s: (s.metrics["usd_per_1m"], -s.metrics["macro_f1"]))


def table(scores: list[Scores], variants: list[Variant], frontier: list[str], champion: str) -> str:
    header = "| variant | status | " + " | ".join(TABLE_COLUMNS) + " |"
    rows = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for s in sorted(scores, key=lambda s: s.metrics["usd_per_1m"]):
        marks = ("champion " if s.variant == champion else "") + ("frontier" if s.variant in frontier else "")
        cells = [_fmt(s.metrics.get(c)) for c in TABLE_COLUMNS]
        rows.append(f"| {s.variant} | ok {marks.strip()} | " + " | ".join(cells) + " |")
    for v in variants:
        if v.status != "ok":
            rows.append(f"| {v.name} | {v.status}: {v.reason} |" + " |" * len(TABLE_COLUMNS))
    return "\n".join(rows) + "\n"


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def frontier_png(scores: list[Scores], frontier: list[str], champion: str, tolerance_floor: float, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for s in scores:
        on_front = s.variant in frontier
        ax.scatter(
            s.metrics["usd_per_1m"],
            s.metrics["macro_f1"],
            s=70 if on_front else 35,
            c="tab:red" if s.variant == champion else ("tab:blue" if on_front else "tab:gray"),
        )
        ax.annotate(s.variant, (s.metrics["usd_per_1m"], s.metrics["macro_f1"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    front = sorted((s for s in scores if s.variant in frontier), key=lambda s: s.metrics["usd_per_1m"])
    ax.plot(
        [s.metrics["usd_per_1m"] for s in front], [s.metrics["macro_f1"] for s in front], "--", c="tab:blue", lw=1, label="Pareto frontier"
    )
    ax.axhline(tolerance_floor, c="tab:red", lw=0.8, ls=":", label="baseline macro-F1 - tolerance")
    ax.set_xscale("log")
    ax.set_xlabel("USD per 1M predictions (log)")
    ax.set_ylabel("macro-F1 (test)")
    ax.set_title("Cost vs quality (champion in red)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


@stage(name="select")
def select(scores: list[Scores], variants: list[Variant], cfg: RunConfig, parent_run: str) -> Selection:
    """The Pareto frontier, the champion, and the comparison table and plot on the parent run."""
    baseline = next(s for s in scores if s.variant == "baseline")
    frontier = pareto_front(scores)
    champion = choose(scores, baseline, cfg.select.tolerance)
    md = table(scores, variants, frontier, champion.variant)
    tracking.log_text(parent_run, md, "comparison.md")
    with tempfile.TemporaryDirectory() as tmp:
        floor = baseline.metrics["macro_f1"] - cfg.select.tolerance
        tracking.log_file(parent_run, frontier_png(scores, frontier, champion.variant, floor, Path(tmp) / "pareto_frontier.png"))
    tracking.set_tags(parent_run, {"champion_variant": champion.variant, "pareto_frontier": ",".join(frontier)})
    tracking.log_metrics(parent_run, {f"champion_{k}": v for k, v in champion.metrics.items()})
    log.info("Champion: %s\n%s", champion.variant, md)
    return Selection(champion=champion, baseline=baseline, frontier=tuple(frontier), table_md=md)
