"""validate: the Great Expectations suite (ml/validation.py; task generate: ml/generation/validation.py) over each staged split;
failure stops the flow before training."""

from __future__ import annotations

import logging
from typing import Any

from frugal.config import RunConfig
from frugal.errors import ValidationFailed
from frugal.paths import ProjectPaths
from ml import validation
from ml.data import SPLITS, read_split
from ml.generation import validation as pair_validation
from ml.validation import failures
from tasks.plumbing import tracking
from tasks.plumbing.stage import stage
from tasks.prepare import Staged

log = logging.getLogger(__name__)


@stage(name="validate")
def validate(staged: Staged, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> dict[str, Any]:
    """Run the suite, log its result to MLflow, and stop the flow when any expectation fails."""
    frames = {split: read_split(staged.dir(paths), split) for split in SPLITS}
    suite = pair_validation if cfg.task == "generate" else validation
    results = suite.run_suite(frames, cfg)
    tracking.log_json(parent_run, results, "validation/result.json")
    failed = failures(results)
    tracking.log_metrics(parent_run, {"validation_failed_expectations": len(failed)})
    if failed:
        tracking.log_text(parent_run, "\n".join(failed) + "\n", "validation/failures.txt")  # GX's own terms, for whoever digs
        sentences, keys = suite.explain(results, frames, cfg)
        raise ValidationFailed(
            "Data validation failed; nothing was trained:\n    " + "\n    ".join(f"{s[0].upper()}{s[1:]}." for s in sentences),
            f"Fix the data, or change {', '.join(keys)} in the config, and run again (details: validation/ in the MLflow run).",
        )
    log.info("Validation passed: %d expectations on each of %s", len(results["train"]["results"]), ", ".join(SPLITS))
    return {split: results[split]["statistics"] for split in SPLITS}
