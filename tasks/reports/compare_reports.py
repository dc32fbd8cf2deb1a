"""`frugal compare`'s reports: the table as Markdown, and as HTML with the cost-vs-quality plot (rows: tasks/reports/compare.py)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from tasks.reports.compare import Row, shown, summary

GENERATIVE = ("rouge_l", "exact_match", "field_f1")  # a generative run's quality metric (generate.metric)
LABELS = {"macro_f1": "macro-F1", "rouge_l": "ROUGE-L", "exact_match": "exact match", "field_f1": "field-level F1"}
Axes = tuple[str, str]  # (cost metric, quality metric): the plot's x and y


def render_markdown(rows: list[Row]) -> str:
    columns = shown(rows)
    head = "| " + " | ".join(c.key for c in columns) + " |\n|" + "|".join("---:" if c.metric else "---" for c in columns) + "|\n"
    body = "".join("| " + " | ".join(r.cell(c.key).replace("|", "\\|") for c in columns) + " |\n" for r in rows)
    return f"# frugal compare\n\n{head}{body}\n{summary(rows)}\n"


def render_html(rows: list[Row], png: bytes) -> str:
    """One file with everything inline (styles, the plot as base64), so it can be mailed or attached as is."""
    columns = shown(rows)
    head = "".join(f"<th>{html.escape(c.key)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=num' if c.metric else ''}>{html.escape(r.cell(c.key))}</td>" for c in columns) + "</tr>\n"
        for r in rows
    )
    x, y = axes(rows)
    image = base64.b64encode(png).decode("ascii")
    return (
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>frugal compare</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#eee}td.num{text-align:right;font-variant-numeric:tabular-nums}</style></head><body>\n"
        f"<h1>frugal compare</h1>\n<p>{html.escape(summary(rows))}</p>\n<table><tr>{head}</tr>\n{body}</table>\n"
        f"<h2>Cost vs quality</h2>\n<img alt='Pareto plot: {x} vs {y}' src='data:image/png;base64,{image}'>\n</body></html>\n"
    )


def axes(rows: list[Row]) -> Axes:
    """usd_per_1m vs macro_f1 where any classifier was measured, else a generative run's usd_per_1m_tokens vs its quality."""
    if any("macro_f1" in r.metrics for r in rows):
        return "usd_per_1m", "macro_f1"
    quality = next((m for m in GENERATIVE if any(m in r.metrics for r in rows)), None)
    return ("usd_per_1m_tokens", quality) if quality else ("usd_per_1m", "macro_f1")


def _frontier(points: list[Row], xy: Axes) -> list[Row]:
    """The run's variants no other beats on both cost (lower) and quality (higher), cheapest first."""
    front: list[Row] = []
    for r in sorted(points, key=lambda r: (_xy(r, xy)[0], -_xy(r, xy)[1])):
        if not front or _xy(r, xy)[1] > _xy(front[-1], xy)[1]:
            front.append(r)
    return front


def _xy(r: Row, xy: Axes) -> tuple[float, float]:
    return r.metrics[xy[0]], r.metrics[xy[1]]


def _plot_run(ax: Any, mine: list[Row], colour: Any, names: bool, xy: Axes) -> None:
    first, points = mine[0], [_xy(r, xy) for r in mine]
    ax.scatter(*zip(*points, strict=True), color=colour, s=35, label=f"{first.run_id[:8]} {first.date} {first.experiment}")
    ax.plot(*zip(*(_xy(r, xy) for r in _frontier(mine, xy)), strict=True), "--", color=colour, lw=1)
    for r in mine:
        if r.champion:
            ax.scatter(*_xy(r, xy), marker="*", s=220, color=colour, edgecolors="black", zorder=3)
        if names:
            ax.annotate(r.variant, _xy(r, xy), xytext=(5, 3), textcoords="offset points", fontsize=7)


def pareto_png(rows: list[Row]) -> bytes:
    """Cost (x, log) vs quality (y) by `axes`: one colour per pipeline run, its frontier dashed, champions as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    xy = axes(rows)
    points = [r for r in rows if xy[0] in r.metrics and xy[1] in r.metrics]
    runs = sorted({r.run_id: r.started_ms for r in points}.items(), key=lambda item: -item[1])
    fig, ax = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab10" if len(runs) <= 10 else "tab20")
    for i, (run_id, _) in enumerate(runs):  # names on every point stop being readable beyond ~40
        _plot_run(ax, [r for r in points if r.run_id == run_id], colours(i % colours.N), len(points) <= 40, xy)
    if points and all(_xy(r, xy)[0] > 0 for r in points):
        ax.set_xscale("log")
        plain = FuncFormatter(lambda value, _: f"{value:g}")  # 3 rather than 3x10^0
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    if points:
        ax.legend(fontsize=7, title="run (champion: star)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    else:
        ax.text(0.5, 0.5, "no measured variants", ha="center", va="center", transform=ax.transAxes)
    unit = "output tokens" if xy[0] == "usd_per_1m_tokens" else "predictions"
    ax.set(xlabel=f"USD per 1M {unit} (log)", ylabel=f"{LABELS[xy[1]]} (test)", title="Cost vs quality (dashed: Pareto frontier per run)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(rows: list[Row], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "compare.md", out_dir / "compare.html"
    md.write_text(render_markdown(rows))
    page.write_text(render_html(rows, pareto_png(rows)))
    return [md, page]
