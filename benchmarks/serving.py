"""What benchmarks/serve.py measures against: the models to serve, `frugal serve` in a subprocess, the load process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.load import KEY_ENV

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    label: str  # "champion" or "baseline (fp32 PyTorch)"
    variant: str
    model: str  # what `frugal serve -s model=` gets
    offline_per_s: float  # the variant's throughput_per_s, measured by evaluation


def find_targets(config: str, project_dir: str | None, which: str) -> tuple[list[Target], Path, str]:
    """The champion and/or its pipeline run's fp32 baseline (`which`), the test split's parquet file, and the registry URI."""
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
    targets = []
    if which in ("champion", "both"):
        offline = client.get_run(champion.tags["variant_run_id"]).data.metrics["throughput_per_s"]
        targets.append(Target("champion", champion.tags.get("variant", "?"), f"models:/{name}/{champion.version}", offline))
    if which in ("baseline", "both"):  # looked up only when asked for: a champion-only run needs no baseline model
        query = f"tags.mlflow.parentRunId = '{parent}' and tags.variant = 'baseline'"
        runs = client.search_runs([client.get_run(parent).info.experiment_id], query)
        if not runs or "model_uri" not in runs[0].data.tags:
            raise ModelError(f"Pipeline run {parent} has no baseline variant with a model.", "Benchmark a complete pipeline run.")
        baseline = runs[0].data
        targets.append(Target("baseline (fp32 PyTorch)", "baseline", str(store.resolve(baseline.tags["model_uri"], paths)),
                              baseline.metrics["throughput_per_s"]))  # fmt: skip
    return targets, store.local(parent, "data/splits", paths) / "test.parquet", uri


class Server:
    """`frugal serve` in a subprocess on a free loopback port; ready once /readyz answers 200."""

    def __init__(self, model: str, flags: list[str], workdir: Path, log: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        # the settings come from the flags alone, not from whatever this shell has exported
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FRUGAL_DATABASE_URL")}
        args = [f"model={model}", "host=127.0.0.1", f"port={self.port}", *flags]
        command = [sys.executable, "-m", "frugal.cli", "serve", "--project-dir", str(workdir), *[x for a in args for x in ("-s", a)]]
        self.log = log
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def tail(self) -> str:
        return self.log.read_text()[-3000:]

    def wait_ready(self, timeout: float = 300) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"frugal serve exited {self.proc.returncode}:\n{self.tail()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
                if ready.status_code == 200:
                    return ready.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"frugal serve was not ready within {timeout:.0f} s:\n{self.tail()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_load(server: Server, key: str, bodies: Path, clients: int, seconds: float, warmup: float) -> dict:
    """One level of load from benchmarks/load.py in its own process (its CPU is then its own); its JSON result."""
    command = [sys.executable, str(ROOT / "benchmarks" / "load.py"), "--url", server.url, "--bodies", str(bodies), "--clients",
               str(clients), "--seconds", str(seconds), "--warmup", str(warmup), "--server-pid", str(server.proc.pid)]  # fmt: skip
    limit = seconds + warmup + 180  # the requests in flight at the deadline may take the client's 60 s timeout, plus start-up
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, KEY_ENV: key}, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator exited {done.returncode}:\n{done.stderr[-3000:]}\nserver log:\n{server.tail()}")
    return json.loads(done.stdout)
