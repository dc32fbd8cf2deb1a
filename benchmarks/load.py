"""The load generator of benchmarks/serve.py, in a process of its own so that its CPU can be measured apart.

    FRUGAL_BENCH_KEY=<api key> python benchmarks/load.py --url http://127.0.0.1:8000 --bodies bodies.jsonl \\
        --clients 8 --seconds 20 --warmup 3 [--server-pid PID]

`--clients` async httpx loops, each posting the next body to /v1/predict as soon as its last answer came,
first for `--warmup` untimed seconds (first-call costs, connections opened), then for `--seconds` timed
ones, on the same connections. The bodies file holds one encoded request body per line ({"texts": [...]}),
encoded once by the parent, so the client does no JSON work while it is timed. The key comes in an
environment variable, not argv, which `ps` shows to everyone.

Prints one JSON object: latencies_s (answered requests of the timed window), texts, errors, error_kinds
(HTTP status or exception name: count), warmup_errors, wall_s, and cpu_s: this process's user + system CPU
over the timed window only (start-up and warm-up excluded). On a small machine the client competes with the
server for the same cores; cpu_s / wall_s says how much of a core it took. With --server-pid it also
prints server_cpu_s, the server's process tree's CPU over the same window (read from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY_ENV = "FRUGAL_BENCH_KEY"


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    texts: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)

    def failed(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


def read_bodies(path: Path) -> list[tuple[bytes, int]]:
    """(encoded body, texts in it) per line; counted here, before anything is timed."""
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return [(line, len(json.loads(line)["texts"])) for line in lines]


async def hammer(http: httpx.AsyncClient, bodies: list[tuple[bytes, int]], clients: int, seconds: float, cursor: itertools.count) -> Tally:
    """`clients` loops posting the next body until `seconds` have passed; a request in flight at the deadline still counts."""
    import httpx

    tally, deadline = Tally(), time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            body, texts = bodies[next(cursor) % len(bodies)]
            began = time.perf_counter()
            try:
                answer = await http.post("/v1/predict", content=body)
            except httpx.HTTPError as exc:
                tally.failed(type(exc).__name__)
                continue
            if answer.status_code != 200:
                tally.failed(str(answer.status_code))
                continue
            tally.latencies_s.append(time.perf_counter() - began)
            tally.texts += texts

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


async def measure(args: argparse.Namespace, key: str, bodies: list[tuple[bytes, int]]) -> dict:
    import httpx

    from benchmarks.proctree import cpu_s

    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits, timeout=60) as http:
        cursor = itertools.count()  # shared by warm-up and timed window: the timed one goes on with the next texts
        warm = await hammer(http, bodies, args.clients, args.warmup, cursor) if args.warmup > 0 else Tally()
        server_before = cpu_s(args.server_pid) if args.server_pid else 0.0
        buckets_before = await app_buckets(http)
        cpu_before, began = own_cpu_s(), time.perf_counter()
        timed = await hammer(http, bodies, args.clients, args.seconds, cursor)
        wall_s, client_cpu_s = time.perf_counter() - began, own_cpu_s() - cpu_before
        server_cpu_s = cpu_s(args.server_pid) - server_before if args.server_pid else None
        app = {le: n - buckets_before.get(le, 0) for le, n in (await app_buckets(http)).items()}
    return {
        "clients": args.clients, "latencies_s": timed.latencies_s, "texts": timed.texts, "errors": timed.errors,
        "error_kinds": timed.error_kinds, "warmup_errors": warm.errors, "warmup_error_kinds": warm.error_kinds,
        "wall_s": wall_s, "cpu_s": client_cpu_s, "server_cpu_s": server_cpu_s, "app_buckets": app,
    }  # fmt: skip


async def app_buckets(http: httpx.AsyncClient) -> dict[str, float]:
    """The server's own /v1/predict latency histogram (frugal_request_seconds, cumulative counts by upper bound): what the
    app measured from the request's first byte parsed to its answer, without the time in sockets and in this client.
    With several workers /metrics is one worker's (whichever answers), so the report gives it for one worker only."""
    from prometheus_client.parser import text_string_to_metric_families

    text = (await http.get("/metrics")).text
    return {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text) if family.name == "frugal_request_seconds"
        for sample in family.samples if sample.name.endswith("_bucket") and sample.labels.get("endpoint") == "/v1/predict"
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the server's base URL")
    parser.add_argument("--bodies", type=Path, required=True, help="one encoded request body per line")
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="the timed window")
    parser.add_argument("--warmup", type=float, default=0, help="untimed seconds before it")
    parser.add_argument("--server-pid", type=int, default=None, help="also measure this process tree's CPU over the window")
    args = parser.parse_args()
    key = os.environ.get(KEY_ENV)
    if not key:
        print(f"load: set {KEY_ENV} to the API key", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(measure(args, key, read_bodies(args.bodies)))))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # benchmarks.proctree, also when run as `python benchmarks/load.py`
    sys.exit(main())
