"""`frugal serve` under load: 1, 8 and 64 concurrent clients, on loopback, with SQLite and with PostgreSQL accounts.

    python benchmarks/serve.py                                   # the default config's champion in the repo's mlflow.db
    python benchmarks/serve.py -c smoke --project-dir /tmp/serve-bench --clients 1,8 --seconds 3 --warmup 1 --out /tmp/serve.md
    python benchmarks/serve.py --target both --db sqlite         # also the fp32 baseline; SQLite accounts only
    python benchmarks/serve.py -s workers=2 -s max_batch=32      # `frugal serve -s` overrides, passed through as given

For each accounts database (`--db`, default `sqlite,postgresql`) and each model (`--target`: the registered
champion `models:/frugal-<config>/<version>`, usually ONNX int8; `baseline`: the same fine-tuned model as
fp32 PyTorch, the `baseline` variant of the champion's pipeline run; or `both`), one `frugal serve`
subprocess is started and every client count of `--clients` is measured against it in turn, each after its
own warm-up. The PostgreSQL accounts store is a throwaway server started here (tools/postgres.py, as the
tests start theirs); where PostgreSQL cannot run, its rows are skipped with the reason in the report. The
key is created in that same database before the server starts, so key check, rate admission, metering and
the served-texts log are all part of what is timed.

The load comes from benchmarks/load.py in a process of its own, so its CPU is measured apart: on a small
machine the clients compete with the server, and the report says how much of a core they took. Each row:
requests/s, texts/s, latency p50/p95/p99, errors (any error makes the exit status 1), the server's peak
memory (VmHWM of the process and its children, the uvicorn workers), the server's and the client's CPU
in cores, and the served texts/s over the variant's offline `throughput_per_s` from MLflow (the API's
overhead). Writes benchmarks/results/serve.md (or --out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: benchmarks.* and tools.* are folders of the repo, not installed packages

from benchmarks.proctree import peak_mb  # noqa: E402
from benchmarks.serve_report import Level, render  # noqa: E402
from benchmarks.serving import Server, Target, find_targets, run_load  # noqa: E402
from tools import postgres  # noqa: E402

MAX_CLIENTS, MAX_SECONDS, MAX_BATCH = 64, 120, 64
DATABASES = ("sqlite", "postgresql")
PLAN = "bench"
PLAN_LIMITS = f"plans.{PLAN}={{requests_per_minute: 1000000000, texts_per_month: 1000000000000, usd_per_1k_texts: 0}}"


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an int in [low, high] (the caps keep a typo from loading a shared machine for an hour)."""

    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return number

    return parse


def listed(item: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: a comma list of `item`s, in the order given, each once."""

    def parse(value: str) -> list:
        items = [item(x.strip()) for x in value.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one")
        return list(dict.fromkeys(items))

    return parse


def database(value: str) -> str:
    if value not in DATABASES:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(DATABASES)}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("-c", "--config", default="default", help="the config whose champion is served (registry model frugal-<name>)")
    add("--project-dir", default=None, help="the project holding mlflow.db (default: the repo; MLFLOW_TRACKING_URI wins)")
    add("--clients", type=listed(bounded(1, MAX_CLIENTS)), default=[1, 8, 64],
        help=f"concurrent client counts, a comma list, one row each (each 1-{MAX_CLIENTS}; default 1,8,64)")  # fmt: skip
    add("--db", type=listed(database), default=list(DATABASES), help="accounts databases, a comma list (default sqlite,postgresql)")
    add("--target", choices=("champion", "baseline", "both"), default="champion", help="the model(s) to serve (default champion)")
    add("--seconds", type=bounded(1, MAX_SECONDS), default=20, help=f"timed seconds per client count (1-{MAX_SECONDS}, default 20)")
    add("--warmup", type=bounded(0, 30), default=3, help="untimed seconds of load before each client count (default 3)")
    add("--batch", type=bounded(1, MAX_BATCH), default=8, help=f"texts per request (1-{MAX_BATCH}, default 8)")
    add("--threads", type=bounded(1, 64), default=None, help="server inference threads (default: configs/serve.yaml)")
    add("-s", "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a `frugal serve -s` override (repeatable), e.g. -s workers=2; only the server's settings check it")  # fmt: skip
    add("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"), help="report path")
    return parser.parse_args()


def write_bodies(test_file: Path, batch: int, path: Path) -> Path:
    """The request bodies, encoded once, one per line, for the load process (so the client stays light)."""
    import pandas as pd

    texts = list(pd.read_parquet(test_file)["text"])
    path.write_text("".join(json.dumps({"texts": texts[i : i + batch]}) + "\n" for i in range(0, len(texts), batch)))
    return path


class Databases:
    """Empty accounts databases; the PostgreSQL server starts at the first one asked for and stops with `stack`."""

    def __init__(self, work: Path, stack: contextlib.ExitStack) -> None:
        self.work, self.stack, self.postgres_url = work, stack, ""

    def new(self, db: str) -> str:
        """Raises postgres.Unavailable where PostgreSQL cannot run here."""
        if db == "sqlite":
            return f"sqlite:///{self.work / 'serve.db'}"
        self.postgres_url = self.postgres_url or self.stack.enter_context(postgres.server())
        return postgres.new_database(self.postgres_url)


def create_key(url: str, plans: dict) -> str:
    """A key on the unlimited benchmark plan, in the database the server will use."""
    from frugal.accounts.store import Accounts

    accounts = Accounts(url, plans)
    try:
        accounts.migrate()
        return accounts.create_key("benchmark", PLAN)[0]
    finally:
        accounts.close()


def bench(db: str, url: str, target: Target, key: str, flags: list[str], work: Path, bodies: Path, args: argparse.Namespace) -> list[Level]:
    """One server on `url`'s accounts; every client count against it, in order, each after its own warm-up."""
    import httpx

    server = Server(target.model, [*flags, f"database_url={url}"], work, work / f"serve-{db}-{target.variant}.log")
    try:
        started = time.monotonic()
        server.wait_ready()
        ready_s = time.monotonic() - started
        fmt = httpx.get(f"{server.url}/v1/model", headers={"X-API-Key": key}, timeout=10).json()["format"]
        levels = []
        for clients in args.clients:
            print(f"  {clients} client(s) ...", flush=True)
            load = run_load(server, key, bodies, clients, args.seconds, args.warmup)
            levels.append(Level(db, target, fmt, clients, load, peak_mb(server.proc.pid), ready_s))
        return levels
    finally:
        server.stop()


def measure(args: argparse.Namespace, targets: list[Target], test_file: Path, flags: list[str], plans: dict) -> tuple[list[Level], dict]:
    """Every row of the table, and the databases that could not be used: {db: why}."""
    levels, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="frugal-serve-bench-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        bodies, databases = write_bodies(test_file, args.batch, work / "bodies.jsonl"), Databases(work, stack)
        for db in args.db:
            try:
                url = databases.new(db)
            except postgres.Unavailable as exc:
                skipped[db] = str(exc)
                print(f"Skipping {db}: {exc}", file=sys.stderr, flush=True)
                continue
            key = create_key(url, plans)
            for target in targets:
                print(f"Serving {target.label} ({target.model}) with {db} accounts ...", flush=True)
                levels += bench(db, url, target, key, flags, work, bodies, args)
    return levels, skipped


def main() -> int:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from frugal.config.serve import load_settings
    from frugal.errors import FrugalError

    load_before = os.getloadavg()
    try:
        targets, test_file, uri = find_targets(args.config, args.project_dir, args.target)
        # the user's -s last: they win over the benchmark's defaults; database_url is added per database in bench()
        flags = [f"tracking_uri={uri}", f"max_texts={MAX_BATCH}", PLAN_LIMITS, "reload_seconds=3600",
                 *([f"threads={args.threads}"] if args.threads else []), *args.set]  # fmt: skip
        settings = load_settings("serve", flags)  # the server's own check of the overrides, before anything starts
    except FrugalError as exc:
        print(f"serve benchmark: {exc.problem}\n  Fix: {exc.fix}", file=sys.stderr)
        return 2
    levels, skipped = measure(args, targets, test_file, flags, settings.plans)
    context = {"uri": uri, "threads": settings.threads, "overrides": args.set, "load": (load_before, os.getloadavg())}
    report = render(levels, skipped, args, context)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"(written to {out})")
    errors = sum(x.errors for x in levels)
    if errors:
        print(f"serve benchmark: {errors} request(s) failed; see the error column", file=sys.stderr)
    if not levels:
        print("serve benchmark: nothing was measured (every database was skipped)", file=sys.stderr)
    return 1 if errors else 2 if not levels else 0


if __name__ == "__main__":
    sys.exit(main())
