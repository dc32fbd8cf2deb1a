"""The `frugal` command. Imports stay light until a command needs the heavy stack."""

from __future__ import annotations

import argparse
import os
import sys

from frugal.errors import FrugalError


def _config_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("-c", "--config", default="default", help="config name under configs/ or a YAML path (default: default)")
    cmd.add_argument(
        "-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config value, e.g. -s finetune.epochs=1 (repeatable)",
    )  # fmt: skip
    cmd.add_argument("--project-dir", default=None, help="where data/, data.dvc, the MLflow store and caches live (default: the repo)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frugal", description="Fine-tune, compress, measure and ship the cheapest good-enough model.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the whole pipeline (completed stages of an earlier run are reused)")
    _config_args(run)
    run.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing cached results")
    _config_args(sub.add_parser("show-config", help="print the resolved config"))
    doctor = sub.add_parser("doctor", help="close MLflow runs that a killed process left RUNNING, and list the ones still live")
    _config_args(doctor)
    deploy = sub.add_parser("deploy", help="register the stage and retraining deployments and the promotion limit on the Prefect API")
    _config_args(deploy)
    worker = sub.add_parser("worker", help="start a Prefect process worker for a work pool (creates the pool if missing)")
    worker.add_argument("--pool", required=True, help="work pool name, e.g. frugal-gpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from the temporary server
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        return {"run": _run, "show-config": _show_config, "doctor": _doctor, "deploy": _deploy, "worker": _worker}[args.command](args)
    except FrugalError as exc:
        print(f"frugal: error: {exc.problem}\n  Fix: {exc.fix}", file=sys.stderr)
        return 2


def _show_config(args: argparse.Namespace) -> int:
    import yaml

    from frugal.config import load_config

    print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(mode="json"), sort_keys=False))
    return 0


def _run(args: argparse.Namespace) -> int:
    from frugal.paths import ProjectPaths
    from tasks.tracking import load_config_or_fail_run

    load_config_or_fail_run(args.config, args.overrides, ProjectPaths.resolve(args.project_dir))  # fail fast, before Prefect starts
    if args.fresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    import signal

    # Ctrl-C must stop a run even when the shell started it with SIGINT ignored (a background job):
    # the KeyboardInterrupt closes every open MLflow run as KILLED on its way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from flows.pipeline import run

    result = run(config=args.config, overrides=args.overrides, project_dir=args.project_dir)
    print(f"\nMLflow parent run {result.run_id} (data {result.data_hash})\n")
    print(result.selection.table_md)
    print(f"Champion: {result.selection.champion.variant}. Registry: {result.registration.reason}")
    print("See it side by side: mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from frugal.config import load_config
    from frugal.paths import ProjectPaths
    from tasks import tracking
    from tasks.lifecycle import close_stale_runs

    cfg, paths = load_config(args.config, args.overrides), ProjectPaths.resolve(args.project_dir)
    mlc = tracking.client(cfg, paths)
    experiments = [e.experiment_id for e in mlc.search_experiments()]
    closed = [run_id for exp in experiments for run_id in close_stale_runs(mlc, exp)]
    live = [r for exp in experiments for r in mlc.search_runs([exp], "attributes.status = 'RUNNING'")]
    print(f"Closed {len(closed)} abandoned run(s) as FAILED{': ' + ', '.join(closed) if closed else ''}.")
    for run in live:
        print(f"Still running: {run.info.run_id} ({run.info.run_name}), owned by pid {run.data.tags.get('frugal.pid', '?')}")
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from flows.deploy import deploy

    for line in deploy(args.config, args.overrides, args.project_dir):
        print(line)
    return 0


def _worker(args: argparse.Namespace) -> int:
    from flows.deploy import start_worker

    return start_worker(args.pool)


if __name__ == "__main__":
    sys.exit(main())
