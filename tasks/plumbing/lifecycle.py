"""Honest MLflow run states: every run ends FINISHED, FAILED or KILLED, once, and a run a killed process left RUNNING is closed.

Each run records its owner (host, pid, the pid's start time, the Prefect flow run). A run
found RUNNING whose owner process is gone, or whose Prefect flow run already ended, was
left behind by a SIGKILL or an out-of-memory kill: it is closed as FAILED with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
HOST, PID, START, FLOW_RUN = "frugal.host", "frugal.pid", "frugal.pid_start", "frugal.prefect_flow_run"


class Terminated(BaseException):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so every open run is closed as KILLED on the way out."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(f"terminated by signal {signum}")


def install_sigterm_handler() -> None:
    """Turn SIGTERM into an exception (signal handlers can only be set from the main thread)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _process_start(pid: int) -> str | None:
    """The start time of `pid` in clock ticks since boot (tells a reused pid from the original), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    tags = {HOST: socket.gethostname(), PID: str(os.getpid()), START: _process_start(os.getpid()) or ""}
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            tags[FLOW_RUN] = str(ctx.flow_run.id)
    except ImportError:
        pass
    return tags


@contextlib.contextmanager
def owned_run(mlc: MlflowClient, experiment_id: str, name: str | None, tags: dict[str, str]) -> Iterator[str]:
    """Create a run and end it in exactly one true state: FINISHED, FAILED (error tag + error.txt) or KILLED."""
    install_sigterm_handler()
    run_id = mlc.create_run(experiment_id, run_name=name, tags={**tags, **owner_tags()}).info.run_id
    try:
        yield run_id
    except (KeyboardInterrupt, Terminated) as exc:
        _close(mlc, run_id, "KILLED", f"{type(exc).__name__}: interrupted ({exc or 'Ctrl-C'})", None)
        raise
    except BaseException as exc:
        _close(mlc, run_id, "FAILED", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        raise
    else:
        mlc.set_terminated(run_id, "FINISHED")


def _close(mlc: MlflowClient, run_id: str, status: str, error: str, details: str | None) -> None:
    """Best effort: the process may be going down, and the original error must still surface."""
    try:
        mlc.set_tag(run_id, "status", "killed" if status == "KILLED" else "failed")
        mlc.set_tag(run_id, "error", error[:5000])
        if details:
            mlc.log_text(run_id, details, "error.txt")
        mlc.set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001 - never mask the error that ended the run
        log.warning("Could not close MLflow run %s as %s: %s", run_id, status, exc)


def stale_reason(tags: dict[str, str]) -> str | None:
    """Why a RUNNING run is known to be abandoned, or None when its owner may still be working on it."""
    host, pid, start = tags.get(HOST), tags.get(PID), tags.get(START)
    if host == socket.gethostname() and pid and pid.isdigit():
        now = _process_start(int(pid))
        if now is None or (start and now != start):
            return f"its process {pid} on {host} ended without closing it (killed, e.g. SIGKILL or out of memory)"
        return None
    state = _prefect_state(tags.get(FLOW_RUN))
    if state is not None and state.is_final():
        return f"its Prefect flow run {tags[FLOW_RUN]} ended {state.type.value} without closing it"
    return None


def _prefect_state(flow_run_id: str | None):  # -> prefect State | None
    if not flow_run_id:
        return None
    try:
        from prefect import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state
    except Exception:  # noqa: BLE001 - no API, or a run from another server: cannot tell, so leave it
        return None


def close_stale_runs(mlc: MlflowClient, experiment_id: str) -> list[str]:
    """Close as FAILED, with the reason, every RUNNING run of the experiment whose owner is gone; return their ids."""
    closed = []
    for run in mlc.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        reason = stale_reason(run.data.tags)
        if reason is None:
            continue
        _close(mlc, run.info.run_id, "FAILED", f"Abandoned: {reason}. Closed by frugal.", None)
        log.warning("Closed abandoned MLflow run %s (%s): %s", run.info.run_id, run.info.run_name, reason)
        closed.append(run.info.run_id)
    return closed


def close_runs_of_flow_run(mlc: MlflowClient, experiment_id: str, flow_run_id: str, reason: str) -> list[str]:
    """Close as FAILED the RUNNING runs a (crashed) Prefect flow run on another machine opened; return their ids."""
    found = mlc.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{FLOW_RUN}` = '{flow_run_id}'")
    for run in found:
        _close(mlc, run.info.run_id, "FAILED", f"Abandoned: {reason}. Closed by frugal.", None)
    return [run.info.run_id for run in found]
