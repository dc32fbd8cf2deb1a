"""The pipeline's commands behind `frugal` (frugal/cli.py parses the arguments and calls these).

They live here, in the top layer, because they run flows and read MLflow; the CLI itself stays in
the base, so `frugal serve`, `frugal keys` and `--help` start without Prefect or MLflow.
"""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from flows.active import active_learning as study
from flows.deploy import deploy as register_deployments
from flows.deploy import start_worker
from flows.pipeline import run as run_pipeline
from flows.reproduce import reproduce as rerun
from frugal import artifacts
from frugal.accounts.store import open_accounts
from frugal.errors import ConfigError
from frugal.paths import ProjectPaths
from ml import feedback
from tasks.plumbing import config, tracking
from tasks.plumbing.lifecycle import close_stale_runs
from tasks.reports import compare as compare_report
from tasks.reports import compare_reports
from tasks.reports.reproduce import write_summary

if TYPE_CHECKING:
    from mlflow import MlflowClient


def budget_minutes(text: str) -> float:
    """`20m`, `90s`, `1h` or a plain number of minutes, as minutes; one ConfigError otherwise."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "m")
    try:
        minutes = float(number) * units[unit]
    except ValueError:
        minutes = -1.0
    if minutes <= 0:
        raise ConfigError(f"--budget {text!r} is not a positive time.", "Give it like 20m, 90s or 1h (minutes when no unit).")
    return minutes


def run(args: argparse.Namespace) -> int:
    if args.record_data:
        args.overrides = [*args.overrides, "data.record_version=true"]
    if args.budget:
        args.overrides = [*args.overrides, f"compress.search.budget_minutes={budget_minutes(args.budget)}"]
    cfg = config.load_or_fail_run(args.config, args.overrides, ProjectPaths.resolve(args.project_dir))  # fail fast
    if args.fresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    # Ctrl-C must stop a run even when the shell started it with SIGINT ignored (a background job):
    # the KeyboardInterrupt closes every open MLflow run as KILLED on its way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    result = run_pipeline(config=args.config, overrides=args.overrides, project_dir=args.project_dir, until=args.until)
    print(f"\nMLflow parent run {result.run_id} (data {result.data_hash})\n")
    if args.metrics_file:
        write_summary(result.run_id, args.metrics_file)
    if result.selection is None or result.registration is None:
        print(f"Stopped after {result.stopped_after}, as asked.")
        return 0
    print(result.selection.table_md)
    print(f"Champion: {result.selection.champion.variant}. Registry: {result.registration.reason}")
    print(f"See it side by side: {where_to_look(tracking.tracking_uri(cfg, ProjectPaths.resolve(args.project_dir)))}")
    return 0


def where_to_look(uri: str) -> str:
    """Where a person opens the run's MLflow: a server's own UI (FRUGAL_MLFLOW_UI_URL when the address a worker
    uses is not the person's, as in the team stack), or `mlflow ui` on the project's SQLite file."""
    if uri.startswith("sqlite:"):
        return f"mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)"
    return os.environ.get("FRUGAL_MLFLOW_UI_URL") or uri


def show_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.config, args.overrides)  # the schema and the compression plan, as a run checks them
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return 0


def reproduce(args: argparse.Namespace) -> int:
    return 0 if rerun(args.run_id, args.project_dir) else 1


def active_learning(args: argparse.Namespace) -> int:
    result = study(config=args.config, overrides=args.overrides, project_dir=args.project_dir)
    print(f"\nMLflow run {result.run_id} (plot: active_learning/learning_curve.png)\n\n{result.table_md}")
    return 0


def doctor(args: argparse.Namespace) -> int:
    cfg, paths = config.load(args.config, args.overrides), ProjectPaths.resolve(args.project_dir)
    mlc = tracking.client(cfg, paths)
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    closed = [run_id for exp in experiments for run_id in close_stale_runs(mlc, exp)]
    live = [r for exp in experiments for r in mlc.search_runs([exp], "attributes.status = 'RUNNING'")]
    print(f"Closed {len(closed)} abandoned run(s) as FAILED{': ' + ', '.join(closed) if closed else ''}.")
    for found in live:
        print(f"Still running: {found.info.run_id} ({found.info.run_name}), owned by pid {found.data.tags.get('frugal.pid', '?')}")
    healthy = True
    for line, ok in alias_report(mlc, cfg.registered_model_name):
        print(line)
        healthy &= ok
    return 0 if healthy else 1


def alias_report(mlc: MlflowClient, name: str) -> list[tuple[str, bool]]:
    """One line per alias of `name`: its version's files are in the artifact store (True), or missing, with the fix (False)."""
    from mlflow.exceptions import MlflowException

    try:
        aliases = mlc.get_registered_model(name).aliases
    except MlflowException:  # nothing registered yet: nothing can point at nothing
        return [(f"No registered model {name} yet.", True)]
    report = []
    for alias, version in sorted(aliases.items()):
        gone = artifacts.missing(mlc, name, str(version))
        if gone is None:
            report.append((f"{name}@{alias} is v{version}: its files are in the artifact store.", True))
            continue
        fix = "rerun `frugal run` with this config to register a new champion, or restore the artifact store"
        report.append((f"{name}@{alias} is v{version}, whose artifacts are missing from the store ({gone}).\n  Fix: {fix}.", False))
    return report


def deploy(args: argparse.Namespace) -> int:
    for line in register_deployments(args.config, args.overrides, args.project_dir):
        print(line)
    return 0


def worker(args: argparse.Namespace) -> int:
    return start_worker(args.pool)


def compare(args: argparse.Namespace) -> int:
    filters = [compare_report.parse_filter(e) for e in args.where]  # a typo fails before MLflow loads
    order = compare_report.parse_sort(args.sort)
    cfg, paths = config.load(args.config, args.overrides), ProjectPaths.resolve(args.project_dir)
    rows = compare_report.select(compare_report.collect(tracking.client(cfg, paths), args.targets), filters, order)
    print(compare_report.render_text(rows))
    for path in compare_reports.write_reports(rows, Path(args.out) if args.out else paths.work / "reports"):
        print(f"Wrote {path}")
    return 0


def feedback_export(args: argparse.Namespace) -> int:
    store = open_accounts(args.serve_config, args.project_dir)  # migrated: a project that never served has "no feedback"
    try:
        frame = feedback.rows_frame(store.feedback_rows(args.task))
    finally:
        store.close()
    feedback.write(frame, Path(args.out), args.task)  # task generate: columns prompt, response
    print(f"Wrote {len(frame)} feedback row(s) from {feedback.shown(str(store.url))} to {args.out}")
    return 0
