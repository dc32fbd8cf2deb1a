"""Compression benchmark: every method side by side in one pipeline run, checked against the targets.

    python benchmarks/compression.py                 # configs/experiments/benchmark.yaml, 64 min measured on 2 cores
    python benchmarks/compression.py -c smoke        # the same report on the tiny config, ~2 min

Targets (champion vs the fine-tuned fp32 baseline served by PyTorch eager, same test split,
same machine): >= 5x lower usd_per_1m, >= 4x smaller on disk, >= 99% of the baseline macro-F1.
Writes a Markdown report (table, targets, machine) and prints it.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = (("usd_per_1m", "lower cost", 5.0), ("model_size_mb", "smaller on disk", 4.0))
MIN_F1_RETAINED = 0.99


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def verdicts(champion: dict[str, float], baseline: dict[str, float]) -> list[str]:
    lines = []
    for metric, what, goal in TARGETS:
        ratio = baseline[metric] / champion[metric]
        status = "met" if ratio >= goal else f"MISSED by {goal / ratio:.2f}x"
        lines.append(f"- {ratio:.2f}x {what} ({metric} {baseline[metric]:.4g} -> {champion[metric]:.4g}); target >= {goal:g}x: {status}")
    retained = champion["macro_f1"] / baseline["macro_f1"]
    status = "met" if retained >= MIN_F1_RETAINED else f"MISSED by {100 * (MIN_F1_RETAINED - retained):.2f} points"
    lines.append(
        f"- macro-F1 retained {100 * retained:.2f}% ({baseline['macro_f1']:.4f} -> {champion['macro_f1']:.4f}); target >= 99%: {status}"
    )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="benchmark")
    parser.add_argument("--project-dir", default=str(ROOT / "benchmarks" / "results" / "project"))
    parser.add_argument("--out", default=None, help="report path (default: benchmarks/results/<config>.md)")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Every stage is recomputed: results cached by an earlier run would time nothing (like `frugal run --fresh`).
    os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    Path(args.project_dir).mkdir(parents=True, exist_ok=True)
    from flows.pipeline import run
    from frugal.config import load_config

    evaluate = load_config(args.config).evaluate  # the report states the measurement settings the run used
    started = time.perf_counter()
    result = run(config=args.config, project_dir=args.project_dir)
    minutes = (time.perf_counter() - started) / 60
    selection = result.selection
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    report = "\n".join(
        [
            f"# Compression benchmark: config `{args.config}`",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; git {commit}; "
            f"MLflow parent run {result.run_id}; whole pipeline {minutes:.1f} min. "
            f"Throughput at batch {evaluate.batch_size} on the test split's real texts, {evaluate.threads} threads, "
            f"on {evaluate.device}; usd_per_1m priced as instance `{evaluate.instance}` (configs/hardware.yaml).",
            "",
            selection.table_md,
            f"Champion: **{selection.champion.variant}** (cheapest within the macro-F1 tolerance of the baseline).",
            "",
            *verdicts(selection.champion.metrics, selection.baseline.metrics),
            "",
        ]
    )
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{args.config}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"(written to {out})")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
