"""Generation benchmark: the generative pipeline's variants side by side in one run, checked against issue 23's goal.

    python benchmarks/generate.py                     # configs/generate.yaml (SmolLM2-135M, BBC headlines), ~45 min on 2 CPU cores
    python benchmarks/generate.py -c generate-smoke   # the same report on the tiny config, ~2 min

Goal (the champion against the fine-tuned fp32 model generating with plain transformers `generate`, same test prompts,
same machine, one request at a time, greedy): >= 5x lower $ per 1M output tokens at >= 97 % of its task score;
speculative decoding >= 1.5x tokens/s with greedy outputs identical to the target's.
Writes benchmarks/results/<config>.md and prints it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COST_TARGET, QUALITY_SHARE, SPECULATIVE_TARGET = 5.0, 0.97, 1.5
COLUMNS = ("usd_per_1m_tokens", "usd_per_1m_prompt_tokens", "tokens_per_s", "ttft_p50_ms", "peak_rss_mb", "model_size_mb")


def variant_metrics(parent_run: str) -> dict[str, dict[str, float]]:
    """The measured variant runs of a pipeline run: variant name -> metrics, with its last step's checks (speculative's)."""
    from tasks.plumbing.tracking import mlflow_client

    mlc = mlflow_client()
    runs = mlc.search_runs(
        [mlc.get_run(parent_run).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run}' and tags.kind = 'variant'"
    )
    out = {}
    for r in runs:
        if "usd_per_1m_tokens" in r.data.metrics:
            last_step = mlc.get_run(r.data.tags["steps"].split(",")[-1]).data.metrics if r.data.tags.get("steps") else {}
            out[r.data.tags["variant"]] = {**last_step, **r.data.metrics}
    return out


def table(runs: dict[str, dict[str, float]], metric: str) -> list[str]:
    base = runs["baseline"]
    head = f"| variant | {metric} | % of baseline | " + " | ".join(COLUMNS) + " | x cheaper |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for name, m in sorted(runs.items(), key=lambda item: item[1]["usd_per_1m_tokens"]):
        cells = " | ".join(f"{m.get(c, float('nan')):.4g}" for c in COLUMNS)
        share = 100 * m[metric] / base[metric] if base[metric] else float("nan")
        lines.append(f"| {name} | {m[metric]:.4f} | {share:.1f} | {cells} | {base['usd_per_1m_tokens'] / m['usd_per_1m_tokens']:.2f} |")
    return lines


def verdicts(runs: dict[str, dict[str, float]], champion: str, metric: str) -> list[str]:
    base, best = runs["baseline"], runs[champion]
    cheaper = base["usd_per_1m_tokens"] / best["usd_per_1m_tokens"]
    kept = best[metric] / base[metric] if base[metric] else 0.0
    out = [
        f"- champion **{champion}**: {cheaper:.2f}x lower $/1M output tokens (goal >= {COST_TARGET}x: "
        f"{'met' if cheaper >= COST_TARGET else 'missed'}), {100 * kept:.1f} % of the baseline's {metric} "
        f"(goal >= {100 * QUALITY_SHARE:.0f} %: {'met' if kept >= QUALITY_SHARE else 'missed'})",
    ]
    for name, m in runs.items():
        if "greedy_identical" in m:  # the speculative step's own check (ml/compress/methods/speculative.py)
            speed = m["tokens_per_s"] / base["tokens_per_s"]
            out.append(
                f"- {name}: {speed:.2f}x the baseline's tokens/s (goal >= {SPECULATIVE_TARGET}x: "
                f"{'met' if speed >= SPECULATIVE_TARGET else 'missed'}); greedy outputs identical to the target's on the checked "
                f"val prompts: {'yes' if m['greedy_identical'] == 1 else 'NO'}, {name}'s test {m.get('rouge_l', float('nan')):.4f} "
                f"against the baseline's {base.get('rouge_l', float('nan')):.4f}; {m.get('tokens_per_target_pass', 0):.2f} tokens "
                f"per target pass, {m.get('draft_passes_per_token', 0):.2f} draft passes per token"
            )
    return out


def search_lines(parent_run: str) -> list[str]:
    """The search's predicted vs measured cost (search.md) and the variants that were skipped, with why."""
    import tempfile

    from tasks.plumbing.tracking import mlflow_client

    mlc = mlflow_client()
    parent = mlc.get_run(parent_run)
    where = f"tags.mlflow.parentRunId = '{parent_run}' and tags.kind = 'variant' and tags.status = 'skipped'"
    runs = mlc.search_runs([parent.info.experiment_id], where)
    skipped = [f"- skipped {r.data.tags['variant']}: {r.data.tags.get('skip_reason', '')}" for r in runs]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            table = Path(mlc.download_artifacts(parent_run, "search.md", tmp)).read_text().splitlines()
        except Exception:  # no search in this config
            table = []
    return (["", "Search (predicted from untrained shapes vs measured):", "", *table] if table else []) + ["", *skipped]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="generate")
    parser.add_argument("--project-dir", default=None, help="default: a new folder under benchmarks/results/")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    project = Path(args.project_dir or ROOT / "benchmarks" / "results" / f"project-{args.config}-{stamp}")
    project.mkdir(parents=True, exist_ok=True)
    from flows.pipeline import run
    from frugal.config import load_config

    cfg = load_config(args.config)
    started = time.perf_counter()
    result = run(config=args.config, project_dir=str(project))
    minutes = (time.perf_counter() - started) / 60
    runs = variant_metrics(result.run_id)
    champion = result.selection.champion.variant
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    from benchmarks.compression import machine

    report = "\n".join(
        [
            f"# Generation benchmark: config `{args.config}`",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; git {commit}; MLflow parent run {result.run_id}; "
            f"whole pipeline {minutes:.1f} min. Greedy decoding, at most {cfg.generate.max_new_tokens} new tokens, one request at "
            f"a time, {cfg.evaluate.threads} threads; quality {cfg.generate.metric} on {cfg.generate.eval_rows} test prompts; "
            f"$ priced as `{cfg.evaluate.instance}` (configs/hardware.yaml).",
            "",
            *table(runs, cfg.quality_metric),
            "",
            *verdicts(runs, champion, cfg.quality_metric),
            *search_lines(result.run_id),
        ]
    )
    out = ROOT / "benchmarks" / "results" / f"{args.config}.md"
    out.write_text(report + "\n")
    print(report)
    print(f"(written to {out})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
