"""What tests/test_serve.py drives: `frugal serve` in a subprocess, raw HTTP, the registry, /metrics, and load with a
record of what was answered (for the metering bounds). The constants are the servers' settings in those tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from frugal.accounts.store import Accounts

PLANS = [
    "plans.test={requests_per_minute: 100000, texts_per_month: 1000000000, usd_per_1k_texts: 0.05}",
    "plans.burst={requests_per_minute: 2, texts_per_month: 1000, usd_per_1k_texts: 0.05}",
    "plans.capped={requests_per_minute: 1000, texts_per_month: 3, usd_per_1k_texts: 0.05}",
    "plans.five={requests_per_minute: 100000, texts_per_month: 5, usd_per_1k_texts: 0.05}",
]
FLUSH_MS = 200  # the metering writer's interval in these servers: what a SIGKILL may lose
MAX_BODY, MAX_TEXTS = 65536, 8
NAME = "frugal-smoke"


def overrides(project: Path, port: int, reload_seconds: float) -> list[str]:
    return [
        f"model=models:/{NAME}@champion", f"tracking_uri=sqlite:///{project / 'mlflow.db'}", f"port={port}",
        f"reload_seconds={reload_seconds}", f"max_body_bytes={MAX_BODY}", f"max_texts={MAX_TEXTS}", "threads=1",
        f"meter_flush_ms={FLUSH_MS}", *PLANS,
    ]  # fmt: skip


class Server:
    """`frugal serve` in a subprocess on a free loopback port, ready once /readyz answers 200."""

    def __init__(self, project: Path, reload_seconds: float, log: Path, extra: tuple[str, ...] = ()) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FRUGAL_DATABASE_URL")}
        flags = [f for o in [*overrides(project, self.port, reload_seconds), *extra] for f in ("-s", o)]
        self.output = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", "frugal.cli", "serve", "--project-dir", str(project), *flags],
                                     env=env, stdout=self.output, stderr=subprocess.STDOUT)  # fmt: skip
        self.http = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + 120
        while time.time() < deadline:
            assert self.proc.poll() is None, f"frugal serve exited:\n{log.read_text()[-3000:]}"
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"frugal serve was not ready within 120 s:\n{log.read_text()[-3000:]}")

    def all_ready(self, times: int = 30) -> None:
        """Ready on `times` fresh connections in a row: with several workers, each one has loaded its model."""
        deadline, streak = time.time() + 120, 0
        while streak < times:
            assert time.time() < deadline, "not every worker became ready within 120 s"
            with httpx.Client(base_url=self.url, timeout=30) as http:
                streak = streak + 1 if http.get("/readyz").status_code == 200 else 0
            time.sleep(0.05 if streak else 0.2)

    def version(self) -> str:
        return self.http.get("/readyz").json()["model_version"]

    def predict(self, key: str, texts: list[str]) -> httpx.Response:
        return self.http.post("/v1/predict", json={"texts": texts}, headers={"Authorization": f"Bearer {key}"})

    def stop(self) -> None:
        self.http.close()
        self.proc.terminate()  # SIGTERM: uvicorn's graceful shutdown
        self.proc.wait(timeout=30)
        self.output.close()


def raw_http(port: int, head: bytes, chunks: tuple[bytes, ...] = ()) -> tuple[bytes, int]:
    """Send a request by hand, its body in chunks, and read the answer; stop sending as soon as the server answers.
    Returns the answer's head and how many chunks went out."""
    import select

    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0.05)[0]:
                break
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += 1
        answer = b""
        while b"\r\n\r\n" not in answer:
            got = sock.recv(65536)
            if not got:
                break
            answer += got
        return answer, sent


def registry(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlflow.db'}"
    return MlflowClient(uri, uri)


def new_champion_version(project: Path) -> str:
    """Register the champion's bundle again as a new version and move the alias to it, as a promoting run would."""
    client = registry(project)
    current = client.get_model_version_by_alias(NAME, "champion")
    created = client.create_model_version(NAME, current.source, run_id=current.run_id, tags=current.tags)
    client.set_registered_model_alias(NAME, "champion", created.version)
    return str(created.version)


def scrape(server: Server) -> dict[str, float]:
    """/metrics as {'name{label="value",...}': value}."""
    from prometheus_client.parser import text_string_to_metric_families

    families = text_string_to_metric_families(server.http.get("/metrics").text)
    return {sample_key(s.name, **s.labels): s.value for f in families for s in f.samples}


def sample_key(name: str, **labels: str) -> str:
    return f"{name}{{{','.join(f'{k}={v!r}' for k, v in sorted(labels.items()))}}}"


def worker_pids(server: Server) -> list[int]:
    """uvicorn's worker processes: the children of `frugal serve` that multiprocessing spawned (not its resource tracker)."""
    from benchmarks.proctree import tree

    def spawned(pid: int) -> bool:
        try:
            return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # it exited while we looked
            return False

    return [pid for pid in tree(server.proc.pid)[1:] if spawned(pid)]


def load(server: Server, key: str, seconds: float, answered: list[tuple[str, float, int]], clients: int = 4) -> int:
    """`clients` threads posting 2 texts each, back to back, for `seconds`; answered gets (request_id, when, texts) per 200."""
    failures = 0

    def client() -> None:
        nonlocal failures
        deadline = time.monotonic() + seconds
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    answer = http.post("/v1/predict", json={"texts": ["good", "bad"]}, headers={"X-API-Key": key})
                except httpx.TransportError:  # the killed worker's connections
                    failures += 1
                    continue
                if answer.status_code == 200:
                    answered.append((answer.json()["request_id"], time.monotonic(), 2))
                else:
                    failures += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def billed(accounts: Accounts, key_id: str) -> tuple[set[str], int]:
    """The request ids with served texts on record for the key, and the texts counted against its quota."""
    from sqlalchemy import select

    from frugal.accounts.models import MonthlyUsage, ServedText

    with accounts.engine.connect() as conn:
        ids = set(conn.execute(select(ServedText.request_id).where(ServedText.key_id == key_id)).scalars())
        texts = conn.execute(select(MonthlyUsage.texts).where(MonthlyUsage.key_id == key_id)).scalar() or 0
    return ids, texts
