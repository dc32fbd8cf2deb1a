"""Feedback becomes the next data version: the merge rule case by case, export and read-back from a real accounts
store (SQLite), prepare on it, and the smoke pipeline training on it under a real Prefect server."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from helpers import shrink

from frugal.config import RunConfig
from frugal.errors import DataError
from frugal.paths import ROOT, ProjectPaths
from ml.data import FROM_FEEDBACK, clean, load_source
from ml.feedback import load_feedback, merge

LABELS = ["negative", "neutral", "positive"]
T0 = datetime(2025, 6, 1, tzinfo=UTC)
NEW = ["feedback test: the new tram line is a joy", "feedback test: queues at the airport again", "feedback test: whatever"]
FAST = ["compress.variants={int8: {method: dynamic_int8}}", "finetune.epochs=1"]  # the data is under test, not the model


def at(minute: int) -> datetime:
    return T0 + timedelta(minutes=minute)


def frame(*rows: tuple) -> pd.DataFrame:
    columns = ["text", "label", "created_at"][: len(rows[0])] if rows else ["text", "label"]
    return pd.DataFrame(list(rows), columns=columns)


def other(label: str) -> str:
    return LABELS[(LABELS.index(label) + 1) % len(LABELS)]


# --- the merge rule, one rule per test --------------------------------------------------------------


def test_texts_match_after_the_normalisation_clean_applies() -> None:
    base = frame(("good day", "positive"), ("bad day", "negative"))
    merged, report = merge(base, frame(("  good\tday\n", "positive", at(0)), ("bad\x07day", "neutral", at(0))), LABELS)
    assert len(merged) == 2 and list(merged["label"]) == ["positive", "neutral"]
    assert (report["feedback_confirmed"], report["feedback_relabelled"], report["feedback_new"]) == (1, 1, 0)


def test_labels_outside_the_set_and_empty_texts_are_dropped_and_counted() -> None:
    feedback = frame(("fine", "sarcastic", at(0)), (" \x00 ", "neutral", at(1)), (None, "neutral", at(2)), ("fine", "neutral", at(3)))
    merged, report = merge(frame(("other", "negative")), feedback, LABELS)
    assert report == {"feedback_rows": 4, "feedback_empty_text": 2, "feedback_unknown_label": 1, "feedback_conflicting": 0,
                      "feedback_relabelled": 0, "feedback_confirmed": 0, "feedback_new": 1}  # fmt: skip
    assert merged.loc[merged["text"] == "fine", "label"].tolist() == ["neutral"]


def test_the_most_recent_feedback_wins_and_disagreement_is_counted() -> None:
    feedback = frame(
        ("a", "positive", at(5)), ("a", "negative", at(1)),  # out of order: the later time wins, not the later row
        ("b", "neutral", None), ("b", "negative", at(0)),  # a row without a time is older than any dated row
        ("c", "neutral", at(2)), ("c", "positive", at(2)),  # equal times: the later row
        ("d", "neutral", at(1)), ("d", "neutral", at(2)),  # repeated, but no disagreement
    )  # fmt: skip
    merged, report = merge(frame(("z", "neutral")), feedback, LABELS)
    assert dict(zip(merged["text"], merged["label"], strict=True)) == {"z": "neutral", "a": "positive", "b": "negative", "c": "positive",
                                                                       "d": "neutral"}  # fmt: skip
    assert report["feedback_conflicting"] == 3 and report["feedback_new"] == 4


def test_feedback_relabels_every_base_row_of_its_text_confirms_or_adds() -> None:
    base = frame(("x", "positive"), ("y", "neutral"), ("x", "negative"), ("keep", "neutral"), ("y", "neutral"))
    feedback = frame(("x", "negative", at(0)), ("y", "neutral", at(0)), ("new", "positive", at(0)))
    merged, report = merge(base, feedback, LABELS)
    assert list(merged["label"]) == ["negative", "neutral", "negative", "neutral", "neutral", "positive"]  # base order, then new texts
    assert list(merged[FROM_FEEDBACK]) == [True, True, True, False, True, True]
    assert (report["feedback_relabelled"], report["feedback_confirmed"], report["feedback_new"]) == (1, 1, 1)  # texts, not rows


def test_the_row_cap_keeps_every_text_with_feedback(smoke_cfg: RunConfig) -> None:
    base = load_source(smoke_cfg.data, ROOT)
    picked = clean(base, shrink(smoke_cfg, data={"max_rows": None}).data)[0].tail(20)  # far outside a 600-row sample's odds
    feedback = pd.DataFrame({"text": picked["text"], "label": picked["label"].map(other), "created_at": at(0)})
    cleaned, report = clean(merge(base, feedback, LABELS)[0], smoke_cfg.data)
    assert report["rows_clean"] == 600
    assert set(zip(feedback["text"], feedback["label"], strict=True)) <= set(zip(cleaned["text"], cleaned["label"], strict=True))


def test_no_feedback_changes_nothing(smoke_cfg: RunConfig) -> None:
    base = load_source(smoke_cfg.data, ROOT)
    merged, report = merge(base, frame(), LABELS)
    assert report["feedback_rows"] == 0
    assert clean(merged, smoke_cfg.data)[0].drop(columns=FROM_FEEDBACK).equals(clean(base, smoke_cfg.data)[0])


# --- a real accounts store: export, read back, prepare -------------------------------------------------


@pytest.fixture(scope="module")
def base_rows(smoke_cfg: RunConfig) -> list[tuple[str, str]]:
    """Four texts of the smoke data with the label they have there."""
    cleaned, _ = clean(load_source(smoke_cfg.data, ROOT), smoke_cfg.data)
    return list(zip(cleaned["text"][:4], cleaned["label"][:4], strict=True))


def seed_store(project: Path, base_rows: list[tuple[str, str]]) -> dict[str, str]:
    """Feedback in <project>/serve.db (the default database), by request id and by text; returns text -> label after the merge."""
    from frugal.accounts.store import Accounts
    from frugal.config.serve import load_settings

    store = Accounts(f"sqlite:///{project / 'serve.db'}", load_settings("serve").plans)
    store.migrate()
    _, key = store.create_key(name="acme", plan="starter", now=at(0))
    texts = [text for text, _ in base_rows[:3]] + [NEW[0]]
    store.record(key, "req-1", texts, [label for _, label in base_rows[:3]] + ["neutral"], "1", 0.001, now=at(1))
    expected = {}
    for index, (text, label) in enumerate(base_rows[:3]):  # corrections of served texts, cited by request id
        store.add_feedback(key, other(label), request_id="req-1", index=index, now=at(2 + index))
        expected[text] = other(label)
    store.add_feedback(key, base_rows[3][1], text=f"  {base_rows[3][0]}\n", now=at(5))  # agrees with the data: confirmed
    expected[base_rows[3][0]] = base_rows[3][1]
    store.add_feedback(key, "positive", request_id="req-1", index=3, now=at(6))  # a text the data lacks
    store.add_feedback(key, "negative", text=NEW[1], now=at(7))
    store.add_feedback(key, "positive", text=NEW[1], now=at(8))  # changes its mind: the later label wins
    store.add_feedback(key, "sarcastic", text=NEW[2], now=at(9))  # not a label of the data: dropped
    expected |= {NEW[0]: "positive", NEW[1]: "positive"}
    store.close()
    return expected


EXPECTED_COUNTS = {"feedback_rows": 8, "feedback_empty_text": 0, "feedback_unknown_label": 1, "feedback_conflicting": 1,
                   "feedback_relabelled": 3, "feedback_confirmed": 1, "feedback_new": 2}  # fmt: skip


@pytest.fixture
def served(tmp_path: Path, base_rows: list[tuple[str, str]], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("FRUGAL_DATABASE_URL", raising=False)
    return seed_store(tmp_path, base_rows)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_writes_every_stored_row_and_reads_back_the_same(
    suffix: str, served: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from frugal.cli import main

    out = tmp_path / "export" / f"feedback{suffix}"
    assert main(["feedback", "export", "--out", str(out), "--project-dir", str(tmp_path)]) == 0
    assert f"Wrote 8 feedback row(s) from sqlite:///{tmp_path / 'serve.db'} to {out}" in capsys.readouterr().out
    from_file, from_db = load_feedback(str(out), tmp_path), load_feedback("sqlite:///serve.db", tmp_path)  # relative: in the project
    assert from_file.equals(from_db) and list(from_file.columns) == ["text", "label", "created_at"]
    assert from_file["created_at"].tolist() == [at(m) for m in range(2, 10)]  # every row, in the order it was given
    if suffix == ".csv":
        assert out.read_text().splitlines()[1].endswith(",2025-06-01T00:02:00+00:00")


def test_export_of_a_project_that_never_served_writes_only_the_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from frugal.cli import main

    out = tmp_path / "feedback.csv"
    assert main(["feedback", "export", "--out", str(out), "--project-dir", str(tmp_path)]) == 0
    assert out.read_text() == "text,label,created_at\n" and "Wrote 0 feedback row(s)" in capsys.readouterr().out
    assert load_feedback(str(out), tmp_path).empty


def test_prepare_merges_the_store_and_the_splits_pass_validation(
    served: dict[str, str], tmp_path: Path, smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str
) -> None:
    from ml.data import read_split
    from tasks.plumbing.tracking import mlflow_client
    from tasks.prepare import prepare
    from tasks.validate import validate

    cfg = shrink(smoke_cfg, data={"feedback": f"sqlite:///{tmp_path / 'serve.db'}"})
    staged = prepare.fn(cfg, store, parent_run)
    rows = pd.concat([read_split(staged.dir(store), s) for s in ("train", "val", "test")])
    assert dict(rows[rows["text"].isin(list(served) + NEW)].itertuples(index=False)) == served
    assert len(rows) == 600 and rows["text"].is_unique
    validate.fn(staged, cfg, store, parent_run)  # raises if an expectation fails
    metrics = mlflow_client().get_run(parent_run).data.metrics
    assert {k: int(metrics[k]) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    report = json.loads(Path(mlflow_client().download_artifacts(parent_run, "data/cleaning_report.json")).read_text())
    assert {k: report[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS and report["rows_clean"] == 600


# --- bad feedback sources: one message each ----------------------------------------------------------------


def unmigrated(tmp: Path) -> str:
    import sqlite3

    sqlite3.connect(tmp / "empty.db").close()
    return "sqlite:///empty.db"


BAD_SOURCES = {
    "missing database file": (lambda tmp: "sqlite:///no-such.db", "Feedback database .*no-such.db does not exist", "data.feedback"),
    "database without the feedback table": (unmigrated, "could not be read: .*no such table: feedback", "serving database"),
    "unreachable server": (lambda tmp: "postgresql://frugal@127.0.0.1:1/serve", "could not be read", "reach it"),
    "unsupported database": (lambda tmp: "mysql://frugal@127.0.0.1/serve", "only SQLite and PostgreSQL", "data.feedback"),
    "missing file": (lambda tmp: "nope.csv", "Feedback file .*nope.csv does not exist", "frugal feedback export"),
    "file without a label column": (
        lambda tmp: pd.DataFrame({"text": ["a"]}).to_csv(tmp / "f.csv", index=False) or "f.csv",
        r"has no column 'label' \(columns: text\)", "columns text, label",
    ),
    "bad created_at": (
        lambda tmp: pd.DataFrame({"text": ["a"], "label": ["neutral"], "created_at": ["last tuesday"]}).to_csv(tmp / "f.csv") or "f.csv",
        "1 created_at value.* not times, e.g. 'last tuesday'", "ISO 8601",
    ),
    "unsupported file type": (lambda tmp: (tmp / "f.txt").write_text("text,label\n") and "f.txt", "unsupported type '.txt'", ".parquet"),
}  # fmt: skip


def test_a_password_in_the_feedback_url_is_refused_before_it_can_be_logged() -> None:
    from frugal.config import load_config
    from frugal.errors import ConfigError

    with pytest.raises(ConfigError, match="password in the URL would be logged") as err:
        load_config("smoke", ["data.feedback=postgresql://frugal:s3cret@db/serve"])
    assert "s3cret" not in str(err.value) and "PGPASSWORD" in str(err.value)
    assert load_config("smoke", ["data.feedback=postgresql://frugal@db/serve"]).data.feedback == "postgresql://frugal@db/serve"


@pytest.mark.parametrize("case", list(BAD_SOURCES))
def test_a_bad_feedback_source_is_one_data_error(case: str, tmp_path: Path) -> None:
    make, message, fix = BAD_SOURCES[case]
    with pytest.raises(DataError, match=message) as err:
        load_feedback(make(tmp_path), tmp_path)
    assert fix in err.value.fix
    assert not (tmp_path / "no-such.db").exists()  # a wrong SQLite path is reported, not created


# --- the smoke pipeline on feedback --------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(prefect_server: None, project: Path, base_rows: list[tuple[str, str]]):
    """The data of a run without feedback, then a whole run on the same config with the project's serving database as feedback."""
    from flows.pipeline import run

    without = run(config="smoke", overrides=FAST, project_dir=str(project), until="data")
    expected = seed_store(project, base_rows)
    feedback = run(config="smoke", overrides=[*FAST, "data.feedback=sqlite:///serve.db"], project_dir=str(project))
    return without, feedback, expected


def client(project: Path):
    from frugal.config import load_config
    from tasks.plumbing import tracking

    return tracking.client(load_config("smoke"), ProjectPaths(project))


@pytest.mark.slow
def test_the_pipeline_trains_on_feedback_as_a_new_data_version(runs, project: Path) -> None:
    without, result, expected = runs
    assert result.data_hash != without.data_hash and result.registration is not None
    parent = client(project).get_run(result.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["data_hash"] == result.data_hash
    assert parent.data.params["data.feedback"] == "sqlite:///serve.db"
    assert {k: int(parent.data.metrics[k]) for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    version = project / ".frugal" / "datasets" / result.data_hash.removesuffix(".dir")
    rows = pd.concat([pd.read_parquet(version / f"{s}.parquet") for s in ("train", "val", "test")])
    assert dict(rows[rows["text"].isin(list(expected) + NEW)].itertuples(index=False)) == expected
    assert (project / "data.dvc").read_text().count(without.data_hash) == 1  # the first version stays pinned: git stays clean


BAD_INPUTS = {
    "feedback database that cannot be opened": ("data.feedback=sqlite:///gone.db", "Feedback database .*gone.db does not exist"),
    "feedback file without a label column": ("data.feedback={tmp}/nolabel.csv", "has no column 'label'"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_feedback_fails_the_run_cleanly(case: str, runs, project: Path, tmp_path: Path) -> None:
    from flows.pipeline import run

    pd.DataFrame({"text": ["a", "b"]}).to_csv(tmp_path / "nolabel.csv", index=False)
    override, message = BAD_INPUTS[case]
    mlc = client(project)
    champion = mlc.get_model_version_by_alias("frugal-smoke", "champion").version
    data_dvc = (project / "data.dvc").read_text()
    with pytest.raises(DataError, match=message) as err:
        run(config="smoke", overrides=[*FAST, override.format(tmp=tmp_path)], project_dir=str(project))
    assert err.value.fix
    experiment = mlc.get_experiment_by_name("smoke")
    latest = mlc.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert latest.info.status == "FAILED" and re.search(message, latest.data.tags["error"])
    assert mlc.get_model_version_by_alias("frugal-smoke", "champion").version == champion
    assert (project / "data.dvc").read_text() == data_dvc
    assert not (project / "gone.db").exists()
