"""The `frugal` command: its arguments, and the serving commands (serve, keys, usage, federated-env).

The pipeline's commands (run, reproduce, compare, ...) are flows/commands.py, imported only when one
runs: `frugal serve` and `frugal --help` never load Prefect, MLflow or torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from frugal import flower_env
from frugal.accounts.report import keys_table, usage_table
from frugal.accounts.store import current_month, open_accounts
from frugal.config.serve import load_settings
from frugal.errors import FrugalError
from frugal.paths import ProjectPaths


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
    _pipeline_commands(sub)
    _report_commands(sub)
    _serving_commands(sub)
    return parser


def _pipeline_commands(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the whole pipeline (completed stages of an earlier run are reused)")
    _config_args(run)
    run.add_argument("--fresh", action="store_true", help="recompute every stage instead of reusing cached results")
    run.add_argument("--record-data", action="store_true", help="pin this run's data version in <data.dir>.dvc even when it differs")
    run.add_argument("--until", choices=["data", "finetune", "compress"], help="stop after this stage (dvc.yaml runs one stage each)")
    run.add_argument("--metrics-file", default=None, help="also write the run's refs and metrics to this JSON file (for DVC)")
    run.add_argument("--budget", default=None, metavar="TIME",
                     help="wall clock for the search, e.g. 20m, 90s, 1h (compress.search.budget_minutes)")  # fmt: skip
    reproduce = sub.add_parser("reproduce", help="rerun a recorded run from its data version and config, and diff its metrics")
    reproduce.add_argument("run_id", help="the MLflow parent run id (a variant's run id works too)")
    reproduce.add_argument("--project-dir", default=None, help="the project holding the run's MLflow store and DVC cache")
    _config_args(sub.add_parser("show-config", help="print the resolved config"))
    _config_args(sub.add_parser("active-learning", help="labels (and $) each strategy needs to near full-data quality (annotation.active)"))
    _config_args(sub.add_parser("deploy", help="register the stage and retraining deployments and the promotion limit on the Prefect API"))
    worker = sub.add_parser("worker", help="start a Prefect process worker for a work pool (creates the pool if missing)")
    worker.add_argument("--pool", required=True, help="work pool name, e.g. frugal-gpu")
    fed = sub.add_parser("federated-env", help="make the Flower environment federated fine-tuning runs in (requirements/flower-lock.txt)")
    fed.add_argument("--path", default=None, help="where to make it (default: $FRUGAL_FLOWER_ENV, else .frugal/envs/flower in the repo)")


def _report_commands(sub: argparse._SubParsersAction) -> None:
    _config_args(sub.add_parser("doctor", help="close MLflow runs that a killed process left RUNNING, list the ones still live, "
                                "and check that the registered model's aliases point at files in the artifact store"))  # fmt: skip
    compare = sub.add_parser("compare", help="one table of every variant across pipeline runs, from MLflow, plus Markdown and HTML reports")
    compare.add_argument("targets", nargs="*", metavar="EXPERIMENT|RUN", help="experiment names or parent run ids (default: all)")
    _config_args(compare)
    compare.add_argument("--sort", metavar="KEY", help="column to sort by; descending: --sort=-KEY (default: -date, variant)")
    compare.add_argument("--where", action="append", default=[], metavar="EXPR", help="keep rows like macro_f1>=0.8 (= != < <= > >=)")
    compare.add_argument("--out", metavar="DIR", help="folder for compare.md and compare.html (default: <project>/.frugal/reports)")
    feedback = sub.add_parser("feedback", help="stored API feedback as labelled data (data.feedback reads a database or an export)")
    export = feedback.add_subparsers(dest="feedback_command", required=True).add_parser("export", help="write every feedback row to a file")
    export.add_argument("--out", required=True, metavar="FILE", help="a .csv or .parquet file: columns text, label, created_at "
                        "(--task generate: prompt, response, created_at)")  # fmt: skip
    export.add_argument("--task", choices=["classify", "generate"], default="classify",
                        help="classify: corrected labels (default); generate: corrected responses of a generative model")  # fmt: skip
    _serve_args(export)  # the database `frugal serve` writes feedback to


def _serving_commands(sub: argparse._SubParsersAction) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys for `frugal serve`")
    keys = keys.add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help="make a key on a plan and print it (only this once)")
    create.add_argument("--name", required=True, help="who the key is for, e.g. a customer name")
    create.add_argument("--plan", required=True, help="a plan from configs/serve.yaml (plans:)")
    listing = keys.add_parser("list", help="every key, with its plan and status")
    revoke = keys.add_parser("revoke", help="revoke a key: its requests get 401 from then on")
    revoke.add_argument("key_id", help="the key's id (fk_...), from `frugal keys list`")
    usage = sub.add_parser("usage", help="requests, texts, cost, billed amount and margin per key for one month")
    usage.add_argument("--month", default=None, metavar="YYYY-MM", help="the month (UTC; default: this month)")
    for cmd in (create, listing, revoke, usage):
        _serve_args(cmd)
    serve = sub.add_parser("serve", help="serve the champion over HTTP: API keys, plans, metering, feedback, /metrics")
    serve.add_argument("--serve-config", default="serve", help="serve config name under configs/ or a YAML path (default: serve)")
    serve.add_argument("-s", "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one serve setting, e.g. -s port=9000 (repeatable)")  # fmt: skip
    serve.add_argument("--project-dir", default=None, help="where mlflow.db and serve.db live when the config leaves them null")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="server processes sharing the port and the accounts database (the same as -s workers=N)")  # fmt: skip


def _serve_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--serve-config", default="serve", help="serve config name or YAML path (default: serve)")
    cmd.add_argument("--project-dir", default=None, help="the project whose serve.db holds the keys when database_url is null "
                     "(FRUGAL_DATABASE_URL overrides both)")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from the temporary server
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    command = "feedback_export" if args.command == "feedback" else args.command.replace("-", "_")
    try:
        return (COMMANDS.get(args.command) or _pipeline(command))(args)
    except FrugalError as exc:
        print(f"frugal: error: {exc.problem}\n  Fix: {exc.fix}", file=sys.stderr)
        return 2


def _pipeline(name: str):  # -> Callable[[argparse.Namespace], int]
    """A command of flows/commands.py: the top layer, imported only by the command that runs it (Prefect, MLflow, torch)."""

    def command(args: argparse.Namespace) -> int:
        from flows import commands  # the top layer (Prefect, MLflow, torch): only the command that runs it loads it

        return getattr(commands, name)(args)

    return command


def _federated_env(args: argparse.Namespace) -> int:
    env = Path(args.path).resolve() if args.path else flower_env.env_dir()
    made = flower_env.ensure(env)
    print(f"Flower environment {'made' if made else 'already up to date'} at {env}")
    if args.path and env != flower_env.env_dir():
        print(f"Federated runs use it when {flower_env.ENV_VAR}={env} is set.")
    return 0


def _keys(args: argparse.Namespace) -> int:
    store = open_accounts(args.serve_config, args.project_dir)
    if args.keys_command == "create":
        plaintext, key = store.create_key(args.name, args.plan)
        print(f"Created key {key.key_id} for {key.name!r} on plan {key.plan}. The key, shown only this once:\n{plaintext}")
    elif args.keys_command == "revoke":
        key = store.revoke(args.key_id)
        print(f"Revoked key {key.key_id} ({key.name}) at {key.revoked_at:%Y-%m-%d %H:%M} UTC.")
    else:
        print(keys_table(store.list_keys()))
    return 0


def _usage(args: argparse.Namespace) -> int:
    store = open_accounts(args.serve_config, args.project_dir)
    month = args.month or current_month()
    print(usage_table(store.usage(month), month))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import uvicorn  # the web stack: only `frugal serve` needs it

    from frugal.serve.app import create_app, worker_env  # (FastAPI, Prometheus: the same)

    workers = [f"workers={args.workers}"] if args.workers is not None else []
    settings = load_settings(args.serve_config, [*args.overrides, *workers])
    root = ProjectPaths.resolve(args.project_dir).root
    app = create_app(settings, root)  # migrates the accounts schema once, and a bad setting fails here, before any worker starts
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")  # model loads and reloads
    if settings.workers == 1:
        uvicorn.run(app, host=settings.host, port=settings.port, log_level="info")
        return 0
    os.environ.update(worker_env(settings, root))  # uvicorn's workers are spawned: they build their app from this
    uvicorn.run("frugal.serve.app:worker_app", factory=True, workers=settings.workers, host=settings.host, port=settings.port,
                log_level="info")  # fmt: skip
    return 0


COMMANDS = {"keys": _keys, "usage": _usage, "serve": _serve, "federated-env": _federated_env}  # the rest: flows/commands.py

if __name__ == "__main__":
    sys.exit(main())
