"""Active learning as its own flow (`frugal active-learning`): not a pipeline stage, since it decides what to label, not what to ship.

Its MLflow run (run name `active-learning`, in the config's experiment) holds each strategy's
learning curve, the plot against labels and annotation $, and the labels each needed (tasks/active_study.py).
"""

from __future__ import annotations

from prefect import flow

from frugal.logs import quiet_user_errors
from frugal.paths import ProjectPaths
from tasks.active_study import StudyResult, study
from tasks.plumbing import config as config_file


@flow(name="frugal-active-learning", log_prints=True)
def active_learning(config: str = "default", overrides: list[str] | None = None, project_dir: str | None = None) -> StudyResult:
    quiet_user_errors()
    paths = ProjectPaths.resolve(project_dir)
    cfg = config_file.load_or_fail_run(config, overrides or [], paths)
    return study(cfg, paths)
