"""The `frugal` command. Imports stay light until a command needs the heavy stack."""

from __future__ import annotations

import argparse
import os
import sys

from frugal.errors import FrugalError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frugal", description="Fine-tune, compress, measure and ship the cheapest good-enough model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the whole pipeline"), ("show-config", "print the resolved config")):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("-c", "--config", default="default", help="config name under configs/ or a YAML path (default: default)")
        cmd.add_argument(
            "-s",
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one config value, e.g. -s finetune.epochs=1 (repeatable)",
        )
    run = sub.choices["run"]
    run.add_argument("--project-dir", default=None, help="where data/, data.dvc and the MLflow store live (default: the repo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no phoning home from the temporary server
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    try:
        if args.command == "show-config":
            import yaml

            from frugal.config import load_config

            print(yaml.safe_dump(load_config(args.config, args.overrides).model_dump(mode="json"), sort_keys=False))
            return 0
        from frugal.paths import ProjectPaths
        from tasks.tracking import load_config_or_fail_run

        # fail fast, before a Prefect server starts
        load_config_or_fail_run(args.config, args.overrides, ProjectPaths.resolve(args.project_dir))
        from flows.pipeline import run

        result = run(config=args.config, overrides=args.overrides, project_dir=args.project_dir)
    except FrugalError as exc:
        print(f"frugal: error: {exc.problem}\n  Fix: {exc.fix}", file=sys.stderr)
        return 2
    print(f"\nMLflow parent run {result.run_id} (data {result.data_hash})\n")
    print(result.selection.table_md)
    print(f"Champion: {result.selection.champion.variant}. Registry: {result.registration.reason}")
    print("See it side by side: mlflow ui --backend-store-uri sqlite:///mlflow.db  (then open http://127.0.0.1:5000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
