"""Scheduled retraining: the pipeline on the newest data, promoting the champion only if the challenger wins.

`frugal deploy` registers this flow as `frugal-retrain/<config name>` with the config's
`schedule.cron`. Each run reads the data source, and the feedback `data.feedback` names
(give it to `frugal deploy -s`), as they are now (prepare -> a new DVC data version when
they changed), reuses every stage whose inputs did not change, re-measures the
current champion on this run's test split and hardware, and applies the champion/challenger
rule under the `frugal-promotion` concurrency limit (tasks/package.py: register). The
decision and both scores are on the run's MLflow parent run.
"""

from __future__ import annotations

from prefect import flow

from flows.pipeline import PipelineResult, run


@flow(name="frugal-retrain", log_prints=True)
def retrain(config: str = "default", overrides: list[str] | None = None, project_dir: str | None = None) -> PipelineResult:
    result = run(config=config, overrides=overrides, project_dir=project_dir)
    print(f"Retrain {result.run_id} on data {result.data_hash}: {result.registration.reason}")
    return result
