"""`frugal compare`: the table is read back from a real MLflow store (SQLite, and an `mlflow server` over HTTP).

The pipeline runs are written with MlflowClient the way tasks/tracking.py, tasks/evaluate.py and
tasks/select.py write them (parent run, nested variant runs, tags, metrics), which takes
milliseconds instead of a pipeline run's minute.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from frugal.cli import main
from tasks.reports import compare
from tasks.reports.compare import CompareError

METRICS = ("macro_f1", "f1_retained", "usd_per_1m", "latency_p50_ms", "model_size_mb")
HASH_A, HASH_B = "aaaa1111bbbb2222cccc3333dddd4444", "eeee5555ffff6666aaaa7777bbbb8888"
MACHINE = "0123456789ab"  # a machine_fingerprint param (frugal/hardware.py); runs a and b predate fingerprints


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def pipeline_run(
    mlc: Any, exp: str, start: str, data_hash: str, champion: str, variants: dict[str, tuple | str], machine: str = ""
) -> dict[str, str]:
    """A parent run and its variant runs: a tuple of METRICS values, or 'skipped' / 'failed'; measured on `machine` if given.
    Returns variant -> run id."""
    tags = {"data_hash": data_hash, "champion_variant": champion, "config_name": "x", "git_commit": "c0ffee"}
    parent = mlc.create_run(exp, start_time=ms(start), tags=tags, run_name="pipeline").info.run_id
    ids = {"": parent}
    for i, (name, values) in enumerate(variants.items()):
        status = values if isinstance(values, str) else "ok"
        child_tags = {"mlflow.parentRunId": parent, "kind": "variant", "variant": name, "status": status, "data_hash": data_hash}
        run_id = mlc.create_run(exp, start_time=ms(start) + 1000 * (i + 1), tags=child_tags, run_name=name).info.run_id
        if status == "failed":  # a variant that fails after logging a metric still shows empty cells
            mlc.log_metric(run_id, "usd_per_1m", 0.5)
        for metric, value in zip(METRICS, values if isinstance(values, tuple) else (), strict=False):
            mlc.log_metric(run_id, metric, value)
        if machine and status == "ok":
            mlc.log_param(run_id, "machine_fingerprint", machine)
        mlc.set_terminated(run_id, "FAILED" if status == "failed" else "FINISHED")
        ids[name] = run_id
    mlc.set_terminated(parent, "FINISHED")
    return ids


def build_store(mlc: Any) -> dict[str, dict[str, str]]:
    """Two pipeline runs in experiment alpha, one in beta, and runs compare must leave out."""
    alpha, beta = mlc.create_experiment("alpha"), mlc.create_experiment("beta")
    first = {"baseline": (0.8123, 1.0, 9.5, 12.34, 86.7), "int8": (0.805, 0.991, 3.25, 5.5, 22.1), "prune": (0.7, 0.8617, 10.2, 8.0, 50.0)}
    second = {
        "baseline": (0.84, 1.0, 9.8, 12.0, 86.7),
        "onnx-int8": (0.839, 0.9988, 1.234, 2.5, 23.0),
        "fp16": "skipped",
        "broken": "failed",
    }
    a = pipeline_run(mlc, alpha, "2024-05-01 12:00:05", HASH_A, "int8", first)
    b = pipeline_run(mlc, alpha, "2024-06-02 08:30:00", HASH_B, "onnx-int8", second)
    # a later attempt at a variant that was KILLED before logging metrics must not hide the measured one
    retry = {"mlflow.parentRunId": b[""], "kind": "variant", "variant": "baseline", "status": "ok"}
    mlc.set_terminated(mlc.create_run(alpha, start_time=ms("2024-06-02 08:40:00"), tags=retry).info.run_id, "KILLED")
    step = mlc.create_run(alpha, tags={"mlflow.parentRunId": b[""], "kind": "step", "step": "finetune"}).info.run_id
    mlc.log_metric(step, "macro_f1", 0.99)  # a step run is not a variant
    mlc.log_metric(mlc.create_run(alpha, tags={"kind": "variant", "variant": "orphan"}).info.run_id, "macro_f1", 0.9)  # no pipeline run
    c = pipeline_run(mlc, beta, "2024-07-01 00:00:00", HASH_A, "baseline", {"baseline": (0.8, 1.0, 7.0, 10.0, 86.7)}, MACHINE)
    mlc.set_terminated(mlc.create_run(beta, tags={"config_name": "beta"}, run_name="invalid-config").info.run_id, "FAILED")
    return {"a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, str]]]:
    """A project folder whose mlflow.db holds the fake pipeline runs (the store the CLI finds by --project-dir), and their ids."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("compare-project")
    return folder, build_store(MlflowClient(f"sqlite:///{folder / 'mlflow.db'}"))


@pytest.fixture(scope="module")
def project(built: tuple[Path, dict]) -> Path:
    return built[0]


@pytest.fixture(scope="module")
def ids(built: tuple[Path, dict]) -> dict[str, dict[str, str]]:
    return built[1]


@pytest.fixture(scope="module")
def mlc(project: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def pairs(rows: list[compare.Row]) -> list[tuple[str, str]]:
    return [(r.run_id, r.variant) for r in rows]


def test_table_lists_both_runs_variants_with_values_read_from_mlflow(mlc: Any, ids: dict) -> None:
    a, b = ids["a"][""], ids["b"][""]
    rows = compare.select(compare.collect(mlc, ["alpha"]), [], None)
    # newest run first, its variants by name; the step run, the KILLED retry and experiment beta are left out
    assert pairs(rows) == [(b, "baseline"), (b, "broken"), (b, "fp16"), (b, "onnx-int8"), (a, "baseline"), (a, "int8"), (a, "prune")]
    lines = {(line.split()[1], line.split()[0]): line.split() for line in compare.render_text(rows).splitlines()[2:-1]}
    assert lines[(a[:8], "int8")] == ["int8", a[:8], "2024-05-01", "12:00", HASH_A[:12], "0.8050", "0.9910", "3.250", "5.50", "22.1", "yes"]
    assert lines[(b[:8], "onnx-int8")] == ["onnx-int8", b[:8], "2024-06-02", "08:30", HASH_B[:12], "0.8390", "0.9988", "1.234", "2.50",
                                           "23.0", "yes"]  # fmt: skip
    assert lines[(b[:8], "baseline")][5:] == ["0.8400", "1.0000", "9.800", "12.00", "86.7", "no"]
    assert lines[(b[:8], "fp16")][1:] == [b[:8], "2024-06-02", "08:30", HASH_B[:12], "no"]  # skipped: empty metric cells
    assert lines[(b[:8], "broken")][1:] == [b[:8], "2024-06-02", "08:30", HASH_B[:12], "no"]  # failed: its logged usd_per_1m hidden


def test_the_machine_column_shows_where_a_variant_was_measured(mlc: Any, ids: dict) -> None:
    (row,) = compare.collect(mlc, ["beta"])
    assert row.machine == MACHINE and compare.render_text([row]).splitlines()[2].split()[-2:] == ["yes", MACHINE]
    rows = compare.collect(mlc, [])
    assert [r.run_id for r in compare.select(rows, [compare.parse_filter(f"machine={MACHINE[:6]}")], None)] == [ids["c"][""]]
    assert len(compare.select(rows, [compare.parse_filter(f"machine!={MACHINE[:6]}")], None)) == len(rows) - 1


def test_arguments_name_experiments_and_runs(mlc: Any, ids: dict) -> None:
    a, b, c = ids["a"][""], ids["b"][""], ids["c"][""]
    assert {r.run_id for r in compare.collect(mlc, [])} == {a, b, c}  # no argument: every experiment
    assert {r.run_id for r in compare.collect(mlc, ["beta"])} == {c}
    assert {r.run_id for r in compare.collect(mlc, [a, "beta"])} == {a, c}
    by_variant_run = compare.collect(mlc, [ids["b"]["onnx-int8"]])  # a variant's run id stands for its pipeline run
    assert sorted(pairs(by_variant_run)) == [(b, "baseline"), (b, "broken"), (b, "fp16"), (b, "onnx-int8")]
    assert len(compare.collect(mlc, ["alpha", b])) == 7  # a run inside a named experiment is listed once


def test_unknown_argument_is_one_error_naming_it(mlc: Any) -> None:
    with pytest.raises(CompareError, match="'nosuch' is neither an experiment nor a run") as err:
        compare.collect(mlc, ["alpha", "nosuch"])
    assert "alpha, beta" in err.value.fix and "frugal compare" in err.value.fix


def usd(rows: list[compare.Row]) -> list[float | None]:
    return [r.metrics.get("usd_per_1m") for r in rows]


def test_sort_by_any_column_with_empty_cells_last(mlc: Any, ids: dict) -> None:
    rows = compare.collect(mlc, ["alpha"])
    assert usd(compare.select(rows, [], compare.parse_sort("usd_per_1m"))) == [1.234, 3.25, 9.5, 9.8, 10.2, None, None]
    assert usd(compare.select(rows, [], compare.parse_sort("-usd_per_1m"))) == [10.2, 9.8, 9.5, 3.25, 1.234, None, None]
    by_latency = compare.select(rows, [], compare.parse_sort("latency"))  # the metric's short name works
    assert [r.metrics.get("latency_p50_ms") for r in by_latency][:3] == [2.5, 5.5, 8.0]
    assert pairs(compare.select(rows, [], compare.parse_sort("date")))[:3] == [(ids["a"][""], v) for v in ("baseline", "int8", "prune")]
    assert [r.variant for r in compare.select(rows, [], compare.parse_sort("-champion"))][:2] == ["onnx-int8", "int8"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (["usd_per_1m<10"], {("a", "baseline"), ("a", "int8"), ("b", "baseline"), ("b", "onnx-int8")}),  # as text, "9.5" > "10"
        (["champion=yes"], {("a", "int8"), ("b", "onnx-int8")}),
        (["variant=baseline", f"data_hash!={HASH_B[:4]}"], {("a", "baseline")}),
        (["macro_f1>=0.8", "date>=2024-06"], {("b", "baseline"), ("b", "onnx-int8")}),
        (["macro_f1="], {("b", "fp16"), ("b", "broken")}),
        (["size_mb > 50", "f1_retained<1"], set()),
        (["date=2024-05-01"], {("a", "baseline"), ("a", "int8"), ("a", "prune")}),
    ],
)
def test_where_filters(where: list[str], expected: set, mlc: Any, ids: dict) -> None:
    names = {ids[k][""]: k for k in ids}
    rows = compare.select(compare.collect(mlc, ["alpha"]), [compare.parse_filter(w) for w in where], None)
    assert {(names[r.run_id], r.variant) for r in rows} == expected


def test_where_on_a_run_id_takes_the_short_or_the_full_id(mlc: Any, ids: dict) -> None:
    b = ids["b"][""]
    rows = compare.collect(mlc, [])
    assert {r.run_id for r in compare.select(rows, [compare.parse_filter(f"run={b[:8]}")], None)} == {b}
    assert {r.run_id for r in compare.select(rows, [compare.parse_filter(f"run!={b}")], None)} == {ids["a"][""], ids["c"][""]}


@pytest.mark.parametrize(
    ("where", "sort", "message"),
    [
        ("nosuch>1", None, "Unknown column 'nosuch' in --where 'nosuch>1'"),
        ("macro_f1~0.8", None, "is not COLUMN OP VALUE"),
        ("macro_f1=>0.8", None, "is numeric and '>0.8' is not a number"),
        (None, "-bogus", "Unknown column 'bogus' in --sort '-bogus'"),
    ],
)
def test_bad_column_or_operator_is_one_error(where: str | None, sort: str | None, message: str) -> None:
    with pytest.raises(CompareError, match=re.escape(message)) as err:
        compare.parse_filter(where) if where else compare.parse_sort(sort)
    assert err.value.fix


def test_cli_prints_the_table_and_writes_markdown_and_html(project: Path, ids: dict, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "reports"
    args = ["compare", "alpha", "--project-dir", str(project), "--sort=-macro_f1", "--where", "macro_f1>=0.8", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split() == ["variant", "run", "date", "data_hash", "macro_f1", "f1_retained", "usd_per_1m", "latency_ms", "size_mb",
                                  "champion", "machine"]  # fmt: skip
    assert [line.split()[:2] for line in printed[2:6]] == [["baseline", ids["b"][""][:8]], ["onnx-int8", ids["b"][""][:8]],
                                                           ["baseline", ids["a"][""][:8]], ["int8", ids["a"][""][:8]]]  # fmt: skip
    assert printed[6].startswith("4 variant(s) of 2 pipeline run(s)")
    assert printed[-2:] == [f"Wrote {out / 'compare.md'}", f"Wrote {out / 'compare.html'}"]
    md = (out / "compare.md").read_text()
    assert f"| onnx-int8 | {ids['b'][''][:8]} | 2024-06-02 08:30 | {HASH_B[:12]} | 0.8390 | 0.9988 | 1.234 | 2.50 | 23.0 | yes |" in md
    assert "| prune |" not in md  # filtered out (macro_f1 0.7)
    page = (out / "compare.html").read_text()
    assert "<td>onnx-int8</td>" in page and "<td class=num>1.234</td>" in page
    png = base64.b64decode(re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000  # a real plot, not an empty image


def test_cli_default_out_is_the_git_ignored_work_folder(project: Path, capsys: Any) -> None:
    assert main(["compare", "beta", "--project-dir", str(project)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"Wrote {project / '.frugal' / 'reports' / 'compare.html'}"
    assert "| baseline |" in (project / ".frugal" / "reports" / "compare.md").read_text()


def test_cli_unknown_argument_or_column_exits_2_with_a_fix(project: Path, capsys: Any) -> None:
    assert main(["compare", "alpha", "nosuch", "--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("frugal: error: 'nosuch' is neither an experiment nor a run") and "\n  Fix: Give an experiment name" in err
    assert main(["compare", "--where", "speed>1", "--project-dir", str(project)]) == 2
    assert "Unknown column 'speed'" in capsys.readouterr().err


@pytest.fixture
def mlflow_server(project: Path) -> Iterator[str]:
    """A real `mlflow server` on loopback serving the fake runs' store (about 10 s to start), stopped with its worker process."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}", "--workers", "1"]
    server = subprocess.Popen([*cmd, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # its own session: the uvicorn worker goes too
        server.wait(timeout=30)


@pytest.mark.slow
def test_cli_reads_a_tracking_server_named_by_mlflow_tracking_uri(mlflow_server: str, ids: dict, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    empty = tmp_path / "project"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    cmd = [sys.executable, "-m", "frugal.cli", "compare", "alpha", "--project-dir", str(empty), "--where", "champion=yes"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()[2:4]]
    assert rows == [
        ["onnx-int8", ids["b"][""][:8], "2024-06-02", "08:30", HASH_B[:12], "0.8390", "0.9988", "1.234", "2.50", "23.0", "yes"],
        ["int8", ids["a"][""][:8], "2024-05-01", "12:00", HASH_A[:12], "0.8050", "0.9910", "3.250", "5.50", "22.1", "yes"],
    ]
    assert not (empty / "mlflow.db").exists()  # the server was read, not a SQLite file in the project
    assert (empty / ".frugal" / "reports" / "compare.html").is_file()
