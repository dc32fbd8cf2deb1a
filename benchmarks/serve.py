"""`frugal serve` under load: N concurrent clients for T seconds, on loopback, against the champion and its fp32 baseline.

    python benchmarks/serve.py                                         # the default config's champion in the repo's mlflow.db
    python benchmarks/serve.py -c smoke --project-dir /tmp/serve-bench # another config / project
    python benchmarks/serve.py --clients 16 --seconds 30 --batch 8

Two servers, one after the other, each `frugal serve` in a subprocess with the same settings:
(1) the registered champion (`models:/frugal-<config>/<version>`, usually ONNX int8) and (2) the same
fine-tuned model as fp32 PyTorch: the `baseline` variant of the pipeline run that registered the
champion, served as a model folder. Clients post batches of real test-split texts with an API key (so
key check, rate admission, metering and the served-texts log are all part of what is timed). Reports
requests/s, texts/s, latency p50/p95/p99, errors (any error makes the exit status 1), the server's
peak memory (VmHWM of the process and its children) and the served texts/s over the variant's offline
`throughput_per_s` from MLflow (the API's overhead). Writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_CLIENTS, MAX_SECONDS, MAX_BATCH = 64, 120, 64
PLAN = "bench"
PLAN_LIMITS = f"plans.{PLAN}={{requests_per_minute: 1000000000, texts_per_month: 1000000000000, usd_per_1k_texts: 0}}"


@dataclass(frozen=True)
class Target:
    label: str  # "champion" or "baseline (fp32 PyTorch)"
    variant: str
    model: str  # what `frugal serve -s model=` gets
    offline_per_s: float  # the variant's throughput_per_s, measured by evaluation


@dataclass(frozen=True)
class Result:
    target: Target
    format: str
    seconds: float
    latencies_s: list[float]
    texts: int
    errors: int
    peak_mb: float
    ready_s: float


def bounded(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an int in [low, high] (the caps keep a typo from loading a shared machine for an hour)."""

    def parse(value: str) -> int:
        number = int(value)
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return number

    return parse


def find_targets(config: str, project_dir: str | None) -> tuple[list[Target], Path, str]:
    """The champion and its pipeline run's baseline, the test split's parquet file, and the registry URI."""
    from mlflow.exceptions import MlflowException

    from frugal.config import load_config
    from frugal.errors import ModelError
    from frugal.paths import ProjectPaths
    from tasks.plumbing import store, tracking

    cfg, paths = load_config(config), ProjectPaths.resolve(project_dir)
    uri = tracking.tracking_uri(cfg, paths)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():  # do not create an empty store
        raise ModelError(f"No MLflow store at {uri}.", f"Run `frugal run -c {config}` there first, or pass --project-dir.")
    client, name = tracking.connect(uri), cfg.registered_model_name
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException as exc:
        raise ModelError(f"No models:/{name}@champion in {uri} ({exc}).", f"Run `frugal run -c {config}` first.") from None
    parent = champion.tags["pipeline_run_id"]
    query = f"tags.mlflow.parentRunId = '{parent}' and tags.variant = 'baseline'"
    runs = client.search_runs([client.get_run(parent).info.experiment_id], query)
    if not runs or "model_uri" not in runs[0].data.tags:
        raise ModelError(f"Pipeline run {parent} has no baseline variant with a model.", "Benchmark a complete pipeline run.")
    baseline = runs[0]
    variant_metrics = client.get_run(champion.tags["variant_run_id"]).data.metrics
    targets = [
        Target("champion", champion.tags.get("variant", "?"), f"models:/{name}/{champion.version}", variant_metrics["throughput_per_s"]),
        Target("baseline (fp32 PyTorch)", "baseline", str(store.resolve(baseline.data.tags["model_uri"], paths)),
               baseline.data.metrics["throughput_per_s"]),
    ]  # fmt: skip
    return targets, store.local(parent, "data/splits", paths) / "test.parquet", uri


def peak_mb(pid: int) -> float:
    """VmHWM (peak resident set) of a process plus its descendants' (a sum of peaks: an upper bound)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            line = next(x for x in Path(f"/proc/{current}/status").read_text().splitlines() if x.startswith("VmHWM:"))
            total += int(line.split()[1])
        except (OSError, StopIteration):
            continue
    return total / 1024


class Server:
    """`frugal serve` in a subprocess on a free loopback port; ready once /readyz answers 200."""

    def __init__(self, model: str, flags: list[str], workdir: Path, log: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FRUGAL_DATABASE_URL")}
        args = [f"model={model}", "host=127.0.0.1", f"port={self.port}", *flags]
        command = [sys.executable, "-m", "frugal.cli", "serve", "--project-dir", str(workdir), *[x for a in args for x in ("-s", a)]]
        self.log = log
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frugal serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
                if ready.status_code == 200:
                    return ready.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"frugal serve was not ready within {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def hammer(url: str, key: str, bodies: list[tuple[bytes, int]], clients: int, seconds: float) -> tuple[list[float], int, int]:
    """`clients` loops posting the next body until `seconds` have passed: (latencies of answered requests, texts, errors)."""
    import httpx

    latencies: list[float] = []
    counts = {"texts": 0, "errors": 0, "next": 0}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                body, n = bodies[counts["next"] % len(bodies)]
                counts["next"] += 1
                started = time.perf_counter()
                try:
                    answer = await http.post("/v1/predict", content=body)
                    ok = answer.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                    counts["texts"] += n
                else:
                    counts["errors"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, counts["texts"], counts["errors"]


def bench(target: Target, args: argparse.Namespace, bodies: list[tuple[bytes, int]], key: str, flags: list[str], work: Path) -> Result:
    import httpx

    server = Server(target.model, flags, work, work / f"serve-{target.variant}.log")
    try:
        started = time.monotonic()
        server.wait_ready()
        ready_s = time.monotonic() - started
        fmt = httpx.get(f"{server.url}/v1/model", headers={"X-API-Key": key}, timeout=10).json()["format"]
        _, _, warm_errors = asyncio.run(hammer(server.url, key, bodies, args.clients, args.warmup))  # first-call costs, not timed
        began = time.perf_counter()
        latencies, texts, errors = asyncio.run(hammer(server.url, key, bodies, args.clients, args.seconds))
        seconds = time.perf_counter() - began  # includes the requests still in flight at the deadline
        return Result(target, fmt, seconds, latencies, texts, errors + warm_errors, peak_mb(server.proc.pid), ready_s)
    finally:
        server.stop()


def row(result: Result) -> list[str]:
    import numpy as np

    ms = np.percentile(np.array(result.latencies_s) * 1000, [50, 95, 99]) if result.latencies_s else [float("nan")] * 3
    served = result.texts / result.seconds
    return [
        result.target.label, result.target.variant, result.format, f"{len(result.latencies_s) / result.seconds:.1f}", f"{served:.1f}",
        *(f"{x:.1f}" for x in ms), str(result.errors), f"{result.peak_mb:.0f}", f"{result.ready_s:.1f}",
        f"{result.target.offline_per_s:.1f}", f"{served / result.target.offline_per_s:.2f}",
    ]  # fmt: skip


HEADER = ["model", "variant", "format", "requests/s", "texts/s", "p50 ms", "p95 ms", "p99 ms", "errors", "server peak MB",
          "ready s", "offline texts/s", "served / offline"]  # fmt: skip


def render(results: list[Result], args: argparse.Namespace, uri: str, threads: int, load: tuple[tuple[float, ...], ...]) -> str:
    from benchmarks.compression import machine

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER), *("| " + " | ".join(row(r)) + " |" for r in results)]
    return "\n".join(
        [
            f"# `frugal serve` under load: config `{args.config}`",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; git {commit}; registry {uri}. "
            f"{args.clients} concurrent clients (one async httpx process on the same machine) for {args.seconds} s after "
            f"{args.warmup} s of warm-up, {args.batch} real test-split texts per request, server `threads={threads}`, "
            f"loopback. Load average (1/5/15 min) before {fmt_load(load[0])}, after {fmt_load(load[1])}.",
            "",
            *lines,
            "",
            "texts/s and requests/s count answered requests over the timed window; latency is per request as the client saw it. "
            "server peak MB: VmHWM of the server process (model load included). offline texts/s: the variant's "
            "`throughput_per_s` from evaluation (in-process, no HTTP, at `evaluate.batch_size`); served / offline is the share "
            "of it the API delivers.",
            "",
        ]
    )


def fmt_load(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="default", help="the config whose champion is served (registry model frugal-<name>)")
    parser.add_argument("--project-dir", default=None, help="the project holding mlflow.db (default: the repo; MLFLOW_TRACKING_URI wins)")
    parser.add_argument("--clients", type=bounded(1, MAX_CLIENTS), default=8, help=f"concurrent clients (1-{MAX_CLIENTS}, default 8)")
    parser.add_argument("--seconds", type=bounded(1, MAX_SECONDS), default=20, help=f"seconds per server (1-{MAX_SECONDS}, default 20)")
    parser.add_argument("--warmup", type=bounded(0, 30), default=3, help="untimed seconds of load before each measurement (default 3)")
    parser.add_argument("--batch", type=bounded(1, MAX_BATCH), default=8, help=f"texts per request (1-{MAX_BATCH}, default 8)")
    parser.add_argument("--threads", type=bounded(1, 64), default=None, help="server inference threads (default: configs/serve.yaml)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"), help="report path")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pandas as pd

    from frugal.accounts.store import Accounts
    from frugal.config.serve import load_settings
    from frugal.errors import FrugalError

    try:
        targets, test_file, uri = find_targets(args.config, args.project_dir)
    except FrugalError as exc:
        print(f"serve benchmark: {exc.problem}\n  Fix: {exc.fix}", file=sys.stderr)
        return 2
    texts = list(pd.read_parquet(test_file)["text"])
    batches = [texts[i : i + args.batch] for i in range(0, len(texts), args.batch)]
    bodies = [(json.dumps({"texts": batch}).encode(), len(batch)) for batch in batches]  # encoded once: the client stays light
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="frugal-serve-bench-") as tmp:
        work = Path(tmp)
        flags = [f"tracking_uri={uri}", f"database_url=sqlite:///{work / 'serve.db'}", f"max_texts={MAX_BATCH}", PLAN_LIMITS,
                 "reload_seconds=3600", *([f"threads={args.threads}"] if args.threads else [])]  # fmt: skip
        settings = load_settings("serve", flags)
        accounts = Accounts(settings.database_url or "", settings.plans)
        accounts.migrate()
        key = accounts.create_key("benchmark", PLAN)[0]
        accounts.close()
        results = []
        for target in targets:
            print(f"Serving {target.label} ({target.model}) ...", flush=True)
            results.append(bench(target, args, bodies, key, flags, work))
    report = render(results, args, uri, settings.threads, (load_before, os.getloadavg()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print(report)
    print(f"(written to {out})")
    errors = sum(r.errors for r in results)
    if errors:
        print(f"serve benchmark: {errors} request(s) failed; see the servers' logs above the table", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
