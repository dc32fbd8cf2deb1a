"""The Markdown report of benchmarks/serve.py: one row per accounts database, model and client count."""

from __future__ import annotations

import argparse
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime

from benchmarks.serving import ROOT, Target

DB_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
HEADER = ["accounts db", "model", "variant", "format", "clients", "requests/s", "texts/s", "p50 ms", "p95 ms", "p99 ms",
          "app p99 ms", "errors", "server peak MB", "server CPU", "client CPU", "served / offline"]  # fmt: skip


@dataclass(frozen=True)
class Level:
    """One row: a client count against one running server."""

    db: str
    target: Target
    format: str
    clients: int
    load: dict  # benchmarks/load.py's result
    peak_mb: float  # the server tree's VmHWM after this level: since it started, so the levels before count too
    ready_s: float

    @property
    def errors(self) -> int:
        return self.load["errors"] + self.load["warmup_errors"]


def cores(seconds: float | None, wall: float) -> str:
    return "?" if seconds is None else f"{seconds / wall:.2f}"


def error_cell(level: Level) -> str:
    kinds: dict[str, int] = {}
    for source in (level.load["error_kinds"], level.load["warmup_error_kinds"]):
        for kind, count in source.items():
            kinds[kind] = kinds.get(kind, 0) + count
    return str(level.errors) + (f" ({', '.join(f'{k}: {n}' for k, n in sorted(kinds.items()))})" if kinds else "")


def app_p99(load: dict) -> str:
    """`<= X`: the upper bound of the server histogram's bucket holding its 99th percentile (one worker's, see load.py)."""
    buckets = sorted(((float(le), n) for le, n in load.get("app_buckets", {}).items()), key=lambda b: b[0])
    total = buckets[-1][1] if buckets else 0
    bound = next((le for le, n in buckets if n >= 0.99 * total), None) if total else None
    return "?" if bound is None else ("> 10 s" if bound == float("inf") else f"<= {bound * 1000:.0f}")


def row(level: Level) -> list[str]:
    import numpy as np

    load, wall = level.load, level.load["wall_s"]
    ms = np.percentile(np.array(load["latencies_s"]) * 1000, [50, 95, 99]) if load["latencies_s"] else [float("nan")] * 3
    served = load["texts"] / wall
    return [
        DB_NAMES[level.db], level.target.label, level.target.variant, level.format, str(level.clients),
        f"{len(load['latencies_s']) / wall:.1f}", f"{served:.1f}", *(f"{x:.1f}" for x in ms), app_p99(load), error_cell(level),
        f"{level.peak_mb:.0f}", cores(load["server_cpu_s"], wall), cores(load["cpu_s"], wall), f"{served / level.target.offline_per_s:.2f}",
    ]  # fmt: skip


def servers(levels: list[Level]) -> list[str]:
    """A line per server started: what it served, how long it took to be ready, the model's offline speed."""
    seen: dict[tuple[str, str], Level] = {}
    for level in levels:
        seen.setdefault((level.db, level.target.model), level)
    return [f"- {DB_NAMES[x.db]}, {x.target.label} `{x.target.model}`: ready in {x.ready_s:.1f} s; offline "
            f"{x.target.offline_per_s:.1f} texts/s" for x in seen.values()]  # fmt: skip


def render(levels: list[Level], skipped: dict[str, str], args: argparse.Namespace, context: dict) -> str:
    """context: uri, threads, overrides (the -s flags), load (the load averages before and after)."""
    from benchmarks.compression import machine

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER), *("| " + " | ".join(row(x)) + " |" for x in levels)]
    overrides = ", ".join(f"`{x}`" for x in context["overrides"]) or "none"
    before, after = (fmt_load(x) for x in context["load"])
    return "\n".join(
        [
            f"# `frugal serve` under load: config `{args.config}`",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; git {commit}; registry {context['uri']}. "
            f"Client counts {', '.join(map(str, args.clients))}, each for {args.seconds} s after {args.warmup} s of warm-up "
            f"against the same running server, {args.batch} real test-split texts per request, server `threads={context['threads']}`, "
            f"other server settings: {overrides}; loopback. Load average (1/5/15 min) before {before}, after {after}.",
            "",
            *table,
            "",
            *(f"{DB_NAMES[db]} rows skipped: {reason}" for db, reason in skipped.items()),
            *([""] if skipped else []),
            "Servers:",
            *servers(levels),
            "",
            "The clients are one process (benchmarks/load.py, async httpx) on the same machine. requests/s and texts/s count "
            "answered requests over the timed window; latency is per request as the client saw it; app p99 ms: the bound of "
            "the server's own latency histogram bucket (`frugal_request_seconds`, one worker's) that holds its 99th percentile, "
            "time in sockets and in the client excluded; errors include the "
            "warm-up's (by HTTP status or exception). server peak MB: the summed VmHWM of `frugal serve` and its child "
            "processes (workers), since it started, so a row includes the levels before it. server CPU and client CPU: "
            f"CPU seconds (user + system) over the timed window per wall second, in cores of the machine's {os.cpu_count()}; "
            "the client's is CPU the server could not have; the server's is its process tree (the PostgreSQL server's "
            "own processes are not in it). served / offline: texts/s over the variant's `throughput_per_s` from evaluation "
            "(in-process, no HTTP, at `evaluate.batch_size`), the share of the raw model speed the API delivers.",
            "",
        ]
    )


def fmt_load(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:.2f}" for v in values)
