"""Loading a run's config: the schema (frugal/config), then the compression plan (ml/compress/plan.py), checked once.

A config that does not load still leaves a FAILED run in the experiment it names, so a scheduled
run's typo shows in MLflow, not only in a worker's log.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from frugal.compose import compose
from frugal.config import RunConfig, validate_config
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths, tracking_uri
from ml.compress.plan import BASELINE_FORMATS, plan
from tasks.plumbing import tracking


def load(config: str | Path, overrides: list[str]) -> RunConfig:
    """The validated config, its compression chains checked too (one ConfigError either way)."""
    return checked(compose(config, overrides))


def checked(raw: dict[str, Any]) -> RunConfig:
    """A composed config mapping through the schema, then the compression plan (methods, options, chain formats)."""
    cfg = validate_config(raw)
    plan(cfg.compress, BASELINE_FORMATS[cfg.task])
    return cfg


def load_or_fail_run(config: str, overrides: list[str], paths: ProjectPaths) -> RunConfig:
    """Load the run's config; one that does not validate still leaves a FAILED run, so a scheduled run's typo shows in MLflow."""
    raw: dict[str, Any] = {}  # stays empty when the files themselves cannot be read
    try:
        raw = compose(config, overrides)
        cfg = checked(raw)
        paths.data(cfg.data.dir)  # both raise a ConfigError when the path (or a symlink on it) leads out of the project
        if "://" not in cfg.result_storage:
            paths.inside(cfg.result_storage, "result_storage")
        return cfg
    except ConfigError as exc:
        _record_config_failure(config, overrides, raw, paths, exc)
        raise


def _record_config_failure(config: str, overrides: list[str], raw: dict[str, Any], paths: ProjectPaths, exc: Exception) -> None:
    """A FAILED run in the experiment the config names, read from its unvalidated keys where they are usable."""
    section = raw.get("tracking") if isinstance(raw.get("tracking"), dict) else {}
    uri = tracking_uri(section.get("tracking_uri") if isinstance(section.get("tracking_uri"), str) else None, paths.root)
    name = next((v for v in (section.get("experiment"), raw.get("name")) if isinstance(v, str) and v), Path(str(config)).stem)
    # the user's one line is the config error, not MLflow creating its tables
    for noisy in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    mlc = tracking.connect(uri)
    tags = {**tracking.code_tags(), "config_name": name}
    run_id = mlc.create_run(tracking.experiment_id_in(uri, name, paths), run_name="invalid-config", tags=tags).info.run_id
    mlc.log_param(run_id, "config", str(config))
    mlc.log_param(run_id, "overrides", json.dumps(overrides)[:6000])
    mlc.set_tag(run_id, "error", str(exc)[:5000])
    mlc.set_terminated(run_id, "FAILED")
