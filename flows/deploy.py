"""`frugal deploy` and `frugal worker`: the deployments `execution: workers` and scheduled retraining need.

For every pool the config's `workers:` names, `deploy` creates a process work pool (if
missing) and registers the stage flows that pool runs (flows/stages.py) as deployments
named `<flow>/<pool>`; it registers `frugal-retrain/<config name>` on `workers.pipeline`
with the config's cron, and creates the global concurrency limits that serialise promotions
and measurements (one slot each; why a leased limit and not a work-queue limit:
tasks/plumbing/measure_slot.py). Deployments run the code in this folder (`Flow.from_source`),
so a worker must see the project at the same path (the team stack's images do: docs/team-stack.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from frugal.config import RunConfig, load_config
from frugal.paths import ROOT, ProjectPaths
from tasks.dispatch import STAGES, stage_pools
from tasks.plumbing.limits import ensure_limit
from tasks.plumbing.measure_slot import MEASURE_LIMIT
from tasks.register import PROMOTION_LIMIT

RETRAIN_ENTRYPOINT = "flows/retrain.py:retrain"


def ensure_pool(name: str) -> bool:
    """Create a process work pool unless it exists; True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=template))
            except ObjectAlreadyExists:  # a worker starting at the same moment made it (the stack's `up` then `deploy`)
                return False
            return True


def _deploy(entrypoint: str, name: str, pool: str, **options: object) -> None:
    from prefect import Flow

    Flow.from_source(source=str(ROOT), entrypoint=entrypoint).deploy(
        name=name, work_pool_name=pool, build=False, push=False, print_next_steps=False, ignore_warnings=True, **options
    )


def deploy(config: str, overrides: list[str], project_dir: str | None) -> Iterator[str]:
    """Register everything on the Prefect API in PREFECT_API_URL; yields one line per thing done."""
    cfg: RunConfig = load_config(config, overrides)
    pools = stage_pools(cfg.workers)
    for pool in sorted(set(pools) | {cfg.workers.pipeline}):
        yield f"work pool {pool}: {'created' if ensure_pool(pool) else 'exists'}"
    for pool, stages in sorted(pools.items()):
        for stage in sorted(stages):
            _deploy(STAGES[stage].entrypoint, pool, pool)
            yield f"deployment {STAGES[stage].entrypoint.split(':')[1]} -> {stage} steps on pool {pool}"
    project = str(ProjectPaths.resolve(project_dir).root)
    schedule = cfg.schedule
    from prefect.schedules import Cron

    schedules = [Cron(schedule.cron, timezone=schedule.timezone)] if schedule.cron else []
    _deploy(
        RETRAIN_ENTRYPOINT, cfg.name, cfg.workers.pipeline, schedules=schedules,
        parameters={"config": config, "overrides": overrides, "project_dir": project},
    )  # fmt: skip
    when = f"cron '{schedule.cron}' ({schedule.timezone})" if schedule.cron else "no schedule"
    yield f"deployment frugal-retrain/{cfg.name} on pool {cfg.workers.pipeline}: {when}, project {project}"
    ensure_limit(PROMOTION_LIMIT)
    yield f"global concurrency limit {PROMOTION_LIMIT}: 1 slot"
    ensure_limit(MEASURE_LIMIT)  # the measure task also creates it when missing; here it is visible before the first run
    yield f"global concurrency limit {MEASURE_LIMIT}: 1 slot (one measurement at a time, on every measure worker)"


def start_worker(pool: str) -> int:
    """Become a Prefect process worker for `pool` (creating the pool if missing); returns only if it cannot start."""
    ensure_pool(pool)
    # Flow runs beat every 30 s (Prefect's minimum) so the parent can tell a dead worker from a slow step.
    env = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30", **os.environ}
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
    os.execve(argv[0], argv, env)
    return 1
