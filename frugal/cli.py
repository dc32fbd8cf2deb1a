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
    run.add_argument("--record-data", action="store_true", help="pin this run's data version in <data.dir>.dvc even when it differs")
    run.add_argument("--until", choices=["data", "finetune", "compress"], help="stop after this stage (dvc.yaml runs one stage each)")
    run.add_argument("--metrics-file", default=None, help="also write the run's refs and metrics to this JSON file (for DVC)")
    reproduce = sub.add_parser("reproduce", help="rerun a recorded run from its data version and config, and diff its metrics")
    reproduce.add_argument("run_id", help="the MLflow parent run id (a variant's run id works too)")
    reproduce.add_argument("--project-dir", default=None, help="the project holding the run's MLflow store and DVC cache")
    _config_args(sub.add_parser("show-config", help="print the resolved config"))
    doctor = sub.add_parser("doctor", help="close MLflow runs that a killed process left RUNNING, and list the ones still live")
    _config_args(doctor)
    deploy = sub.add_parser("deploy", help="register the stage and retraining deployments and the promotion limit on the Prefect API")
    _config_args(deploy)
    worker = sub.add_parser("worker", help="start a Prefect process worker for a work pool (creates the pool if missing)")
    worker.add_argument("--pool", required=True, help="work pool name, e.g. frugal-gpu")
    compare = sub.add_parser("compare", help="one table of every variant across pipeline runs, from MLflow, plus Markdown and HTML reports")
    compare.add_argument("targets", nargs="*", metavar="EXPERIMENT|RUN", help="experiment names or parent run ids (default: all)")
    _config_args(compare)
    compare.add_argument("--sort", metavar="KEY", help="column to sort by; descending: --sort=-KEY (default: -date, variant)")
    compare.add_argument("--where", action="append", default=[], metavar="EXPR", help="keep rows like macro_f1>=0.8 (= != < <= > >=)")
    compare.add_argument("--out", metavar="DIR", help="folder for compare.md and compare.html (default: <project>/.frugal/reports)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from the temporary server
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        return COMMANDS[args.command](args)
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

    if args.record_data:
        args.overrides = [*args.overrides, "data.record_version=true"]
    load_config_or_fail_run(args.config, args.overrides, ProjectPaths.resolve(args.project_dir))  # fail fast, before Prefect starts
    if args.fresh:
        os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
    import signal

    # Ctrl-C must stop a run even when the shell started it with SIGINT ignored (a background job):
    # the KeyboardInterrupt closes every open MLflow run as KILLED on its way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from flows.pipeline import run

    result = run(config=args.config, overrides=args.overrides, project_dir=args.project_dir, until=args.until)
    print(f"\nMLflow parent run {result.run_id} (data {result.data_hash})\n")
    if args.metrics_file:
        from tasks.reproduce import write_summary

        write_summary(result.run_id, args.metrics_file)
    if result.selection is None or result.registration is None:
        print(f"Stopped after {result.stopped_after}, as asked.")
        return 0
    print(result.selection.table_md)
    print(f"Champion: {result.selection.champion.variant}. Registry: {result.registration.reason}")
    print("See it side by side: mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from frugal.paths import ProjectPaths
    from tasks import reproduce, tracking, versioning

    paths = ProjectPaths.resolve(args.project_dir)
    mlc = tracking.store_client(paths)
    original = reproduce.recorded(mlc, args.run_id)
    cfg = reproduce.rerun_config(original)
    if original.dirty:
        print(f"frugal: warning: run {original.run_id} ran on a modified work tree (commit {original.commit} + local changes); "
              "the code may differ from what ran.", file=sys.stderr)  # fmt: skip
    versioning.restore(original.data_hash, paths, cfg.data.remote)  # a missing or changed version fails before any run starts
    config_file = reproduce.write_config(cfg, paths, original.run_id)
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.pipeline import run

    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):  # recompute every stage: a cache hit would prove nothing
        result = run(config=str(config_file), project_dir=args.project_dir)
    mlc.set_tag(result.run_id, "reproduces", original.run_id)
    again = reproduce.recorded(mlc, result.run_id)
    rows = reproduce.diff(original.variants, again.variants)
    text = reproduce.table(rows, original, again)
    tracking.log_text(result.run_id, text, "reproduce_diff.md")
    same = reproduce.quality_matches(rows)
    print(f"\n{text}\n\nQuality metrics {'match exactly' if same else 'DIFFER'} (data {original.data_hash}).")
    return 0 if same else 1


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


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from frugal.config import load_config
    from frugal.paths import ProjectPaths
    from tasks import compare, tracking

    filters, order = [compare.parse_filter(e) for e in args.where], compare.parse_sort(args.sort)  # a typo fails before MLflow loads
    cfg, paths = load_config(args.config, args.overrides), ProjectPaths.resolve(args.project_dir)
    rows = compare.select(compare.collect(tracking.client(cfg, paths), args.targets), filters, order)
    print(compare.render_text(rows))
    for path in compare.write_reports(rows, Path(args.out) if args.out else paths.work / "reports"):
        print(f"Wrote {path}")
    return 0


COMMANDS = {"run": _run, "show-config": _show_config, "doctor": _doctor, "deploy": _deploy, "worker": _worker, "reproduce": _reproduce,
            "compare": _compare}  # fmt: skip

if __name__ == "__main__":
    sys.exit(main())
