"""`frugal compare`: one table of every variant across pipeline runs, read back from MLflow.

Rows are read from the store each time (never from a run's own comparison.md), so the table is the
same from a laptop's SQLite file and from the team's MLflow server. A pipeline run is a parent run;
its variants are nested runs tagged `kind=variant` (tasks/evaluate.py); the champion is the parent's
`champion_variant` tag (tasks/select.py); `machine` is the fingerprint of the machine a variant was
measured on (its `machine_fingerprint` param): costs compare only within one. Generative runs (task
generate) show their own metrics (`GENERATE_COLUMNS`) where some row has them; a classifier-only table is unchanged.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from frugal.errors import FrugalError

if TYPE_CHECKING:
    from mlflow import MlflowClient


class CompareError(FrugalError):
    """An argument of `frugal compare` names no experiment or run, or a --sort/--where names no column."""


@dataclass(frozen=True)
class Column:
    key: str
    metric: str | None = None  # the MLflow metric behind a numeric column
    fmt: str = "{}"


COLUMNS = (
    Column("variant"), Column("run"), Column("date"), Column("data_hash"),
    Column("macro_f1", "macro_f1", "{:.4f}"), Column("f1_retained", "f1_retained", "{:.4f}"),
    Column("usd_per_1m", "usd_per_1m", "{:#.4g}"),  # significant digits: GPU prices are fractions of a cent
    Column("latency_ms", "latency_p50_ms", "{:.2f}"), Column("size_mb", "model_size_mb", "{:.1f}"), Column("champion"),
    Column("machine"),
)  # fmt: skip
GENERATE_COLUMNS = (  # shown after usd_per_1m when some row is a generative variant (generate.metric: one of the first three)
    Column("rouge_l", "rouge_l", "{:.4f}"), Column("exact_match", "exact_match", "{:.4f}"), Column("field_f1", "field_f1", "{:.4f}"),
    Column("quality_retained", "quality_retained", "{:.4f}"), Column("usd_per_1m_tokens", "usd_per_1m_tokens", "{:#.4g}"),
    Column("tokens_per_s", "tokens_per_s", "{:.1f}"), Column("ttft_ms", "ttft_p50_ms", "{:.1f}"),
)  # fmt: skip
EVERY = (*COLUMNS[:7], *GENERATE_COLUMNS, *COLUMNS[7:])
BY_KEY = {c.key: c for c in EVERY}
ALIASES = {"latency": "latency_ms", "latency_p50_ms": "latency_ms", "size": "size_mb", "model_size_mb": "size_mb", "data": "data_hash",
           "ttft": "ttft_ms", "ttft_p50_ms": "ttft_ms"}  # fmt: skip
SHORT = {"run": 8, "data_hash": 12}  # ids shown like short git hashes
PREFIXED = ("run", "data_hash", "date", "machine")  # `=` matches a prefix: a short id from the table, or a day (date=2025-06-01)
OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "!=": operator.ne, "<=": operator.le, ">=": operator.ge, "=": operator.eq, "<": operator.lt, ">": operator.gt,
}  # fmt: skip
_EXPR = re.compile(r"^\s*([A-Za-z_]\w*)\s*(!=|<=|>=|=|<|>)\s*(.*?)\s*$")
FAILED = ("FAILED", "KILLED")  # run states whose metrics, if any, describe no finished measurement


@dataclass(frozen=True)
class Row:
    """One variant of one pipeline run."""

    variant: str
    run_id: str  # the parent (pipeline) run
    started_ms: int
    data_hash: str
    champion: bool
    experiment: str
    metrics: dict[str, float]
    machine: str = ""  # the measuring machine's fingerprint; empty before fingerprints were recorded

    def full(self, key: str) -> str | float | None:
        """The column's value before shortening: what --where and --sort compare."""
        col = BY_KEY[key]
        if col.metric:
            return self.metrics.get(col.metric)
        return {"variant": self.variant, "run": self.run_id, "date": self.date, "data_hash": self.data_hash,
                "champion": "yes" if self.champion else "no", "machine": self.machine}[key]  # fmt: skip

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.started_ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M")

    def cell(self, key: str) -> str:
        value = self.full(key)
        if value is None:
            return ""  # skipped or failed variant, or a metric this run never logged
        text = BY_KEY[key].fmt.format(value)
        return text[: SHORT[key]] if key in SHORT else text


Filter = Callable[[Row], bool]


def shown(rows: list[Row]) -> tuple[Column, ...]:
    """The columns of these rows: a classifier's always; with generative rows, each metric column some row has."""
    if not any(c.metric in r.metrics for c in GENERATE_COLUMNS for r in rows):
        return COLUMNS
    return tuple(c for c in EVERY if c.metric is None or c.key == "size_mb" or any(c.metric in r.metrics for r in rows))


def column(name: str, where: str) -> str:
    key = ALIASES.get(name.strip(), name.strip())
    if key not in BY_KEY:
        raise CompareError(f"Unknown column {name!r} in {where}.", f"Use one of: {', '.join(BY_KEY)}.")
    return key


def parse_sort(spec: str | None) -> tuple[str, bool] | None:
    """`KEY` or `-KEY` (descending); None keeps the default order."""
    if not spec:
        return None
    return column(spec.removeprefix("-"), f"--sort {spec!r}"), spec.startswith("-")


def parse_filter(expr: str) -> Filter:
    match = _EXPR.match(expr)
    if match is None:
        raise CompareError(f"--where {expr!r} is not COLUMN OP VALUE.",
                           "Write e.g. --where 'macro_f1>=0.8'; operators: = != < <= > >= (quote it in the shell).")  # fmt: skip
    name, op, raw = match.groups()
    key, compare = column(name, f"--where {expr!r}"), OPERATORS[op]
    if BY_KEY[key].metric:
        if raw == "" and op in ("=", "!="):  # `macro_f1=` finds the empty cells: skipped and failed variants
            return lambda r: (r.full(key) is None) == (op == "=")
        try:
            number = float(raw)
        except ValueError:
            raise CompareError(f"--where {expr!r}: {key} is numeric and {raw!r} is not a number.", f"Write e.g. {key}{op}0.5.") from None
        return lambda r: r.full(key) is not None and compare(r.full(key), number)
    if key in PREFIXED and op in ("=", "!="):
        return lambda r: str(r.full(key)).startswith(raw) == (op == "=")
    return lambda r: compare(str(r.full(key)), raw)  # text; ISO dates order correctly as text


def select(rows: Iterable[Row], filters: list[Filter], order: tuple[str, bool] | None) -> list[Row]:
    """Rows passing every filter: newest run first, variants by name, then by `order` (empty cells last either way)."""
    kept = sorted((r for r in rows if all(f(r) for f in filters)), key=lambda r: (r.run_id, r.variant))
    kept = sorted(sorted(kept, key=lambda r: r.variant), key=lambda r: r.started_ms, reverse=True)
    if order is None:
        return kept
    key, descending = order
    if key == "date":
        return sorted(kept, key=lambda r: r.started_ms, reverse=descending)
    present = [r for r in kept if r.full(key) is not None]
    return sorted(present, key=lambda r: r.full(key), reverse=descending) + [r for r in kept if r.full(key) is None]


def _pages(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search (a server returns 1000 at most per page)."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _root(mlc: MlflowClient, run: Any) -> Any:
    """The pipeline run above a variant or step run (chain steps nest under their variant)."""
    for _ in range(10):
        parent = run.data.tags.get("mlflow.parentRunId")
        if not parent:
            break
        run = mlc.get_run(parent)
    return run


def _unknown(target: str, mlc: MlflowClient, experiments: dict[str, str]) -> CompareError:
    known, store = ", ".join(sorted(experiments)[:20]) or "none", re.sub(r"//[^/@]*@", "//***@", mlc.tracking_uri)  # no password
    return CompareError(
        f"{target!r} is neither an experiment nor a run in the MLflow store {store}.",
        f"Give an experiment name (here: {known}) or a parent run id; `frugal compare` alone lists every experiment's runs "
        "(with the same --project-dir or MLFLOW_TRACKING_URI as the runs).",
    )


def _variant_runs(mlc: MlflowClient, targets: list[str], experiments: dict[str, str]) -> list[Any]:
    """Variant runs of the named experiments (name -> id) and parent runs; every experiment when `targets` is empty."""
    from mlflow.exceptions import MlflowException

    exp_ids, queries = ([] if targets else list(experiments.values())), []
    for target in targets:
        if target in experiments:  # a name first: an experiment could be named like a run id, never the reverse
            exp_ids.append(experiments[target])
            continue
        try:
            root = _root(mlc, mlc.get_run(target))
        except MlflowException:
            raise _unknown(target, mlc, experiments) from None
        queries.append(([root.info.experiment_id], f"tags.mlflow.parentRunId = '{root.info.run_id}' and tags.kind = 'variant'"))
    if exp_ids:
        queries.append((exp_ids, "tags.kind = 'variant'"))
    found = {r.info.run_id: r for ids, q in queries for r in _pages(lambda t, ids=ids, q=q: mlc.search_runs(ids, q, page_token=t))}
    return [r for r in found.values() if r.data.tags.get("mlflow.parentRunId")]


def _newest_measured(runs: list[Any]) -> dict[tuple[str, str], Any]:
    """One run per (parent, variant): a retried measurement leaves two; keep the one with metrics, then the later one."""
    best: dict[tuple[str, str], Any] = {}
    for run in sorted(runs, key=lambda r: (bool(r.data.metrics), r.info.start_time or 0)):
        best[(run.data.tags["mlflow.parentRunId"], run.data.tags.get("variant", run.info.run_name))] = run
    return best


def _row(variant: str, run: Any, parent: Any, experiment: str) -> Row:
    blank = run.info.status in FAILED or run.data.tags.get("status") in ("skipped", "failed")
    metrics = {} if blank else {c.metric: run.data.metrics[c.metric] for c in EVERY if c.metric in run.data.metrics}
    tags, started, rid = parent.data.tags, parent.info.start_time or 0, parent.info.run_id
    machine = run.data.params.get("machine_fingerprint", "")
    return Row(variant, rid, started, tags.get("data_hash", ""), tags.get("champion_variant") == variant, experiment, metrics, machine)


def collect(mlc: MlflowClient, targets: list[str]) -> list[Row]:
    """One row per variant of every pipeline run the targets name (experiment names or run ids)."""
    experiments = {e.name: e.experiment_id for e in _pages(lambda t: mlc.search_experiments(page_token=t))}
    names = {i: n for n, i in experiments.items()}
    runs = _newest_measured(_variant_runs(mlc, targets, experiments))
    parents = {pid: mlc.get_run(pid) for pid, _ in runs}
    return [_row(variant, run, parents[pid], names.get(parents[pid].info.experiment_id, ""))
            for (pid, variant), run in runs.items() if parents[pid].info.lifecycle_stage != "deleted"]  # fmt: skip


def render_text(rows: list[Row]) -> str:
    """Plain aligned columns for the terminal: numbers right-aligned."""
    columns = shown(rows)
    table = [[c.key for c in columns], *([r.cell(c.key) for c in columns] for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) if c.metric else v.ljust(w) for v, w, c in zip(line, widths, columns, strict=True)).rstrip()
             for line in table]  # fmt: skip
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], summary(rows)])


def summary(rows: list[Row]) -> str:
    return f"{len(rows)} variant(s) of {len({r.run_id for r in rows})} pipeline run(s); dates are run starts in UTC."
