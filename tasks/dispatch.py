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
from pathlib import Path
from typing import Any

from frugal.config import RunConfig, StepConfig
from frugal.paths import ProjectPaths
from tasks import tracking

log = logging.getLogger(__name__)
STAGE_FLOWS = {"finetune": "frugal-finetune", "compress_step": "frugal-compress-step", "measure": "frugal-measure"}


class StepCrashed(RuntimeError):
    """A step's flow run on a worker ended without a result (its worker was killed, or it stopped sending heartbeats)."""


def result_storage(config: str, overrides: list[str], project_dir: str | None) -> Any:
    """The Prefect result storage the config names: a folder in the project, or an fsspec URL (s3://...)."""
    from frugal.config import load_config
    from frugal.errors import ConfigError

    paths = ProjectPaths.resolve(project_dir)
    try:
        where = load_config(config, overrides).result_storage
    except ConfigError:  # the flow records the config error; no result is stored
        where = ".frugal/results"
    return storage_block(where, paths)


def storage_block(where: str, paths: ProjectPaths) -> Path | str:
    """A folder as a Path; a URL as a saved RemoteFileSystem block (Prefect only accepts saved blocks), by its slug."""
    if "://" not in where:
        return Path(where) if Path(where).is_absolute() else paths.root / where
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
        from tasks.finetune import finetune

        return self._call("finetune", finetune, self._pool("finetune"), kwargs)

    def compress_step(self, *, step: StepConfig, **kwargs: Any) -> Any:
        from tasks.compress import get_method
        from tasks.compression import compress_step

        role = "heavy_steps" if get_method(step.method).heavy else "light_steps"
        return self._call("compress_step", compress_step, self._pool(role), {"step": step, **kwargs})

    def measure(self, **kwargs: Any) -> Any:
        from tasks.evaluate import measure_model

        return self._call("measure", measure_model, self._pool("measure"), kwargs)

    def _call(self, stage: str, task: Callable[..., Any], pool: str | None, kwargs: dict[str, Any]) -> Any:
        if pool is None:
            return task(**kwargs)
        # The worker has its own project folder and caches; it is told which MLflow store and result storage to use.
        params = {k: v for k, v in kwargs.items() if k != "paths"}
        params |= {"tracking_uri": tracking.mlflow_client().tracking_uri, "result_storage": self.cfg.result_storage}
        return run_remote(STAGE_FLOWS[stage], pool, params, self.cfg.workers.heartbeat_seconds, self.cfg.workers.timeout_seconds)


def run_remote(flow_name: str, pool: str, params: dict[str, Any], heartbeat: int, timeout: int) -> Any:
    """Start the stage's deployment on `pool`, wait for it, and return its persisted result."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    flow_run = run_deployment(f"{flow_name}/{pool}", parameters=params, timeout=0)
    log.info("%s runs on pool %s as flow run %s", flow_name, pool, flow_run.id)
    deadline, started = time.monotonic() + timeout, None
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run.id)
            state = flow_run.state
            if state is not None and state.is_final():
                break
            if state is not None and state.is_running():
                started = started or time.monotonic()
                if _silent_for(client, flow_run.id, started) > 4 * heartbeat:
                    _mark_crashed(client, flow_run.id, f"no heartbeat for {4 * heartbeat} s: its worker died")
                    raise StepCrashed(f"{flow_name} on pool {pool} (flow run {flow_run.id}) stopped sending heartbeats: its worker died")
            if time.monotonic() > deadline:
                raise StepCrashed(f"{flow_name} on pool {pool} did not finish within workers.timeout_seconds={timeout}")
            time.sleep(1)
    if not state.is_completed():
        state.result()  # raises the step's own error
        raise StepCrashed(f"{flow_name} on pool {pool} ended {state.type.value}: {state.message}")
    return state.result()


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


def _mark_crashed(client: Any, flow_run_id: Any, why: str) -> None:
    from prefect.states import Crashed

    client.set_flow_run_state(flow_run_id, Crashed(message=why), force=True)
