"""`frugal reproduce RUN_ID`: rerun a recorded pipeline run from its data version and config, and diff the metrics.

The comparison rules (quality must match exactly, cost is a ratio) are tasks/reports/reproduce.py.
"""

from __future__ import annotations

import sys

from flows.pipeline import run
from frugal.paths import ProjectPaths
from tasks.plumbing import tracking
from tasks.reports import reproduce as report
from tasks.version import restore


def reproduce(run_id: str, project_dir: str | None) -> bool:
    """Rerun `run_id` with every stage recomputed; print the diff table; True when every quality metric matches."""
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings  # Prefect's settings load slowly: only here

    paths = ProjectPaths.resolve(project_dir)
    mlc = tracking.store_client(paths)
    original = report.recorded(mlc, run_id)
    cfg = report.rerun_config(original)
    if original.dirty:
        print(f"frugal: warning: run {original.run_id} ran on a modified work tree (commit {original.commit} + local changes); "
              "the code may differ from what ran.", file=sys.stderr)  # fmt: skip
    restore(original.data_hash, paths, cfg.data.remote)  # a missing or changed version fails before any run starts
    config_file = report.write_config(cfg, paths, original.run_id)
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):  # recompute every stage: a cache hit would prove nothing
        result = run(config=str(config_file), project_dir=project_dir)
    mlc.set_tag(result.run_id, "reproduces", original.run_id)
    again = report.recorded(mlc, result.run_id)
    rows = report.diff(original.variants, again.variants)
    text = report.table(rows, original, again)
    tracking.log_text(result.run_id, text, "reproduce_diff.md")
    same = report.quality_matches(rows)
    print(f"\n{text}\n\nQuality metrics {'match exactly' if same else 'DIFFER'} (data {original.data_hash}).")
    return same
