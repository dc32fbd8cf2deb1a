"""Where a step runs: in this process (`execution: local`) or as a Prefect deployment on a work pool (`workers`).

The pipeline calls `Dispatch(cfg, paths).finetune(...)` and the like the same way in both
modes. In `workers` mode a step whose role has a pool in `workers:` becomes a flow run of
the deployment `<stage flow>/<pool>` (flows/stages.py, registered by `frugal deploy`); the
parent waits for it, watching its heartbeats, and reads its persisted result. The cached
task inside the stage flow is the same one local mode runs, so results are shared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from prefect.states import Cancelled, Crashed

from frugal.config import RunConfig, StepConfig, WorkersConfig, load_config
from frugal.errors import ConfigError, WorkerError
from frugal.paths import ProjectPaths
from ml.compress import get_method
from tasks.compress import compress_step
from tasks.evaluate import measure_model
from tasks.finetune import finetune
from tasks.plumbing import tracking
from tasks.plumbing.lifecycle import close_runs_of_flow_run
from tasks.plumbing.locks import serialised

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageFlow:
    """A step kind that may leave the parent flow: the flow a worker runs it in, and which `workers:` keys give its pool."""

    flow: str  # the Prefect flow's name (flows/stages.py)
    entrypoint: str  # where `frugal deploy` finds that flow
    roles: tuple[str, ...]  # WorkersConfig fields naming the pool(s) it runs on


# The one table of step kinds, flows and roles: dispatch, flows/stages.py and `frugal deploy` (flows/deploy.py) read it.
STAGES = {
    "finetune": StageFlow("frugal-finetune", "flows/stages.py:finetune_stage", ("finetune",)),
    "compress_step": StageFlow("frugal-compress-step", "flows/stages.py:compress_step_stage", ("heavy_steps", "light_steps")),
    "measure": StageFlow("frugal-measure", "flows/stages.py:measure_stage", ("measure",)),
}


def stage_pools(workers: WorkersConfig) -> dict[str, set[str]]:
    """Pool -> the step kinds deployed on it (a role without a pool runs in the parent flow)."""
    pools: dict[str, set[str]] = {}
    for kind, spec in STAGES.items():
        for role in spec.roles:
            if pool := getattr(workers, role):
                pools.setdefault(pool, set()).add(kind)
    return pools


class StepCrashed(WorkerError):
    """A step's flow run on a worker ended without a result; the runs it opened are closed by the parent."""

    def __init__(self, problem: str, fix: str, flow_run_id: Any) -> None:
        super().__init__(problem, fix)
        self.flow_run_id = str(flow_run_id)


class WorkerDied(StepCrashed):
    """The step's worker stopped beating: the step itself did not fail, so another worker of the pool may run it."""


def result_storage(config: str, overrides: list[str], project_dir: str | None) -> Any:
    """The Prefect result storage the config names: a folder in the project, or an fsspec URL (s3://...)."""
    paths = ProjectPaths.resolve(project_dir)
    try:
        where = load_config(config, overrides).result_storage
    except ConfigError:  # the flow records the config error; no result is stored
        where = ".frugal/results"
    return storage_block(where, paths)


def storage_block(where: str, paths: ProjectPaths) -> Path | str:
    """A folder as a Path; a URL as a saved RemoteFileSystem block (Prefect only accepts saved blocks), by its slug."""
    if "://" not in where:
        return Path(where) if Path(where).is_absolute() else paths.inside(where, "result_storage")
    from prefect.filesystems import RemoteFileSystem

    RemoteFileSystem(basepath=where).save(RESULTS_BLOCK, overwrite=True)
    return f"remote-file-system/{RESULTS_BLOCK}"


RESULTS_BLOCK = "frugal-results"


class Dispatch:
    """The three step kinds that may leave the parent flow, bound to this run's placement."""

    def __init__(self, cfg: RunConfig, paths: ProjectPaths) -> None:
        self.cfg, self.paths = cfg, paths

    def _pool(self, role: str) -> str | None:
        return getattr(self.cfg.workers, role) if self.cfg.execution == "workers" else None

    def finetune(self, **kwargs: Any) -> Any:
        return self._call("finetune", finetune, self._pool("finetune"), kwargs)

    def compress_step(self, *, step: StepConfig, **kwargs: Any) -> Any:
        role = "heavy_steps" if get_method(step.method).heavy else "light_steps"
        return self._call("compress_step", compress_step, self._pool(role), {"step": step, **kwargs})

    def measure(self, **kwargs: Any) -> Any:
        return self._call("measure", measure_model, self._pool("measure"), kwargs)

    def _call(self, stage: str, task: Callable[..., Any], pool: str | None, kwargs: dict[str, Any]) -> Any:
        if pool is None:
            return serialised(task, self.paths, self.cfg.locks)(**kwargs)
        # The worker has its own project folder and caches; it is told which MLflow store, result storage and locks to use.
        params = {k: v for k, v in kwargs.items() if k != "paths"}
        params |= {"tracking_uri": tracking.mlflow_client().tracking_uri, "result_storage": self.storage_location()}
        params["locks"] = self.cfg.locks
        retries = self.cfg.workers.crash_retries
        for attempt in range(retries + 1):
            try:
                return run_remote(STAGES[stage].flow, task.name, pool, params, self.cfg.workers)
            except StepCrashed as crash:
                if "parent_run" in kwargs:  # the runs the dead step opened cannot close themselves
                    mlc = tracking.mlflow_client()
                    experiment = mlc.get_run(kwargs["parent_run"]).info.experiment_id
                    close_runs_of_flow_run(mlc, experiment, crash.flow_run_id, crash.problem)
                if not isinstance(crash, WorkerDied) or attempt == retries:
                    raise
                # A new flow run of the same deployment: any live worker of the pool takes it, and the stage's cache
                # and lock (tasks/plumbing/locks.py) let it reuse what is finished once the dead holder's lock expires.
                log.warning("%s; submitting it again (%d of %d)", crash.problem, attempt + 1, retries)
        raise AssertionError("unreachable")

    def storage_location(self) -> str:
        """The result storage as the worker must see it: a URL, or this project's folder as an absolute path."""
        where = self.cfg.result_storage
        return where if "://" in where else str(self.paths.root / where)


def run_remote(flow_name: str, task_name: str, pool: str, params: dict[str, Any], workers: WorkersConfig) -> Any:
    """Start the stage's deployment on `pool`, wait for it, and return the result its task persisted."""
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = run_deployment(f"{flow_name}/{pool}", parameters=params, timeout=0)
    except ObjectNotFound:
        raise WorkerError(
            f"the Prefect API has no deployment {flow_name}/{pool}", "register it with `frugal deploy -c CONFIG` using this config"
        ) from None
    log.info("%s runs on pool %s as flow run %s", flow_name, pool, flow_run.id)
    begun, started, silence = time.monotonic(), None, 2.5 * workers.heartbeat_seconds
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.is_final():
                break
            if state is not None and state.is_running():
                started = started or time.monotonic()
                if _silent_for(client, flow_run.id, started) > silence:
                    why = f"{flow_name} on pool {pool} (flow run {flow_run.id}) sent no heartbeat for {silence:.0f} s"
                    fix = "rerun: completed steps are reused, training resumes"
                    _end(client, flow_run.id, Crashed, why + ": its worker died", fix, WorkerDied)
            elif started is None and time.monotonic() - begun > workers.start_timeout_seconds:
                why = f"no worker of pool {pool} picked up {flow_name} (flow run {flow_run.id}) within {workers.start_timeout_seconds} s"
                _end(client, flow_run.id, Cancelled, why, f"start a worker with `frugal worker --pool {pool}`, then rerun")
            if time.monotonic() - begun > workers.timeout_seconds:
                why = f"{flow_name} on pool {pool} did not finish within workers.timeout_seconds={workers.timeout_seconds}"
                _end(client, flow_run.id, Cancelled, why, "raise workers.timeout_seconds, or give the pool faster hardware")
            time.sleep(1)
        if not state.is_completed():
            state.result()  # raises the step's own error
            raise StepCrashed(f"{flow_name} on pool {pool} ended {state.type.value}: {state.message}", "see the worker's log", flow_run.id)
        return _task_result(client, flow_run.id, task_name)


def _task_result(client: Any, flow_run_id: Any, task_name: str) -> Any:
    """The result of the stage task inside a finished stage flow run, read from the shared result storage.

    (The flow's own result would sit in the worker's default storage, which another machine cannot read.)
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    done = [r for r in runs if r.name.rsplit("-", 1)[0] == task_name and r.state is not None and r.state.is_completed()]
    if len(done) != 1:
        why = f"flow run {flow_run_id} finished without one completed {task_name} task run"
        raise StepCrashed(why, "see the worker's log", flow_run_id)
    return done[0].state.result()


def _silent_for(client: Any, flow_run_id: Any, started: float) -> float:
    """Seconds since the flow run's last heartbeat event (or since it started running, before the first one)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    events = client.read_events(
        filter=EventFilter(
            event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
            resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
        ),
        limit=1,
    ).events
    if not events:
        return time.monotonic() - started
    from datetime import UTC, datetime

    return (datetime.now(UTC) - events[0].occurred).total_seconds()


def _end(client: Any, flow_run_id: Any, state: Callable[..., Any], why: str, fix: str, error: type[StepCrashed] = StepCrashed) -> NoReturn:
    """Give up on a step's flow run: record why on it (so no worker starts it later), then fail the parent's step."""
    client.set_flow_run_state(flow_run_id, state(message=why), force=True)
    raise error(why, fix, flow_run_id)
