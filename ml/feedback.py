"""Feedback from the serving API as labelled data: read it (database or exported file), export it, merge it into the base data.

`prepare` calls `add_feedback` when `data.feedback` is set; the merged rows are then cleaned,
split, validated and versioned like any source, so feedback becomes a new DVC data version.

The merge rule (`merge`; docs/data.md "Feedback becomes the next data version"):

1. Texts are compared after the normalisation `clean()` applies (control characters and runs of
   whitespace become one space, ends stripped). Feedback rows left without text are dropped
   (`feedback_empty_text`), and so are rows whose label is not in data.labels (`feedback_unknown_label`).
2. Several feedback rows for one text: the most recent `created_at` wins (rows without a time are
   older than any dated row; equal times: the later row). Texts whose rows disagree are counted
   (`feedback_conflicting`).
3. The winning label replaces the label of every base row with that text (`feedback_relabelled`)
   or agrees with all of them (`feedback_confirmed`); a text the base lacks is added (`feedback_new`).
4. Rows of texts with feedback are marked (`tasks.data.FROM_FEEDBACK`): the `data.max_rows` cap
   always keeps them.

`feedback_rows` and the two dropped counts are rows; the other counts are texts.

task: generate merges the same way (ml/generation/data.py `add_pair_feedback`): text is the prompt, label the corrected
response; `merge` gets no label set (any non-empty response is usable; an empty one counts as `feedback_unknown_label`)
and the pairs' own normalisation, which keeps newlines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from frugal.accounts.store import Accounts
from frugal.config import DataConfig
from frugal.errors import DataError, FrugalError
from ml.data import FROM_FEEDBACK, label_str, normalise_text

log = logging.getLogger(__name__)
Normalise = Callable[[pd.Series], pd.Series]

COLUMNS = ["text", "label", "created_at"]
FILE_FIX = "Point data.feedback at a .csv or .parquet file with columns text, label[, created_at], as `frugal feedback export` writes."
DB_FIX = (
    "Point data.feedback at the serving database (database_url in configs/serve.yaml; by default sqlite:///<project>/serve.db) "
    "and check this machine can reach it, or at a file `frugal feedback export` wrote."
)


def add_feedback(base: pd.DataFrame, cfg: DataConfig, root: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The base rows with `data.feedback` merged in by the rule above, and the merge's counts."""
    assert cfg.feedback is not None
    merged, report = merge(base, load_feedback(cfg.feedback, root), cfg.labels)
    log.info("Feedback from %s: %s", shown(cfg.feedback), ", ".join(f"{k.removeprefix('feedback_')}: {v}" for k, v in report.items()))
    return merged, report


def merge(
    base: pd.DataFrame, feedback: pd.DataFrame, labels: list[str] | None, normalise: Normalise = normalise_text
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Merge feedback (text, label[, created_at]) into base rows (text, label) by the module's rule; return the rows and counts.

    labels None (task: generate): a label is free text (a response), normalised like the text.
    """
    report = {"feedback_rows": len(feedback)}
    usable, dropped = _usable(feedback, labels, normalise)
    report |= dropped
    report["feedback_conflicting"] = int((usable.groupby("text")["label"].nunique() > 1).sum())
    winners = _latest(usable)
    key = normalise(base["text"].fillna("").astype(str))  # a missing base text ("") never matches: empty feedback is dropped
    new_label = key.map(pd.Series(winners["label"].to_numpy(), index=winners["text"].to_numpy()))
    has = new_label.notna()
    agrees = _labels(base["label"], labels, normalise).eq(new_label)[has].groupby(key[has]).all()
    report["feedback_relabelled"] = int((~agrees).sum())
    report["feedback_confirmed"] = int(agrees.sum())
    added = winners[~winners["text"].isin(key)]
    report["feedback_new"] = len(added)
    relabelled = base.assign(label=base["label"].where(~has, new_label), **{FROM_FEEDBACK: has})
    return pd.concat([relabelled, added.assign(**{FROM_FEEDBACK: True})], ignore_index=True), report


def _labels(label: pd.Series, labels: list[str] | None, normalise: Normalise) -> pd.Series:
    return label.map(label_str) if labels is not None else normalise(label.fillna("").astype(str))


def _usable(feedback: pd.DataFrame, labels: list[str] | None, normalise: Normalise) -> tuple[pd.DataFrame, dict[str, int]]:
    text = normalise(feedback["text"].fillna("").astype(str))
    label = _labels(feedback["label"], labels, normalise)
    empty = text == ""
    unknown = ~empty & (~label.isin(labels) if labels is not None else label.eq(""))
    created = pd.to_datetime(feedback["created_at"], utc=True) if "created_at" in feedback else pd.Series(pd.NaT, index=feedback.index)
    usable = pd.DataFrame({"text": text, "label": label, "created_at": created})[~empty & ~unknown]
    return usable, {"feedback_empty_text": int(empty.sum()), "feedback_unknown_label": int(unknown.sum())}


def _latest(feedback: pd.DataFrame) -> pd.DataFrame:
    """One row (text, label) per text: its most recent feedback, in time order."""
    ordered = feedback.assign(_row=range(len(feedback))).sort_values(["created_at", "_row"], na_position="first", kind="stable")
    return ordered.drop_duplicates("text", keep="last")[["text", "label"]].reset_index(drop=True)


# --- reading and exporting ----------------------------------------------------------------------


def load_feedback(source: str, root: Path, task: str = "classify") -> pd.DataFrame:
    """Feedback rows (text, label, created_at as UTC times, NaT when unknown) from a database URL or an exported file.

    task generate: a row is a prompt (`text`) and its corrected response (`label`); an exported file's prompt/response
    columns (`frugal feedback export --task generate`) read as those."""
    if "://" in source:
        return read_database(source, root, task)
    path = Path(source) if Path(source).is_absolute() else root / source
    frame = _read_file(path)
    if task == "generate":
        frame = frame.rename(columns={"prompt": "text", "response": "label"})
    return _typed(frame, str(path))


def shown(source: str) -> str:
    """The source as it may be printed and logged: a URL without its password."""
    if "://" not in source:
        return source
    from sqlalchemy.engine import make_url

    try:
        return make_url(source).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: read_database says so
        return source


def database_url(source: str, root: Path) -> str:
    """`source` with a relative SQLite path made relative to the project (not to wherever the process started)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(source)
    except ArgumentError as exc:
        raise DataError(f"data.feedback={source!r} is not a database URL: {exc}", DB_FIX) from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database) if Path(url.database).is_absolute() else root / url.database
        if not path.is_file():  # opening it would create an empty database and hide the mistake
            raise DataError(f"Feedback database {path} does not exist.", DB_FIX)
        url = url.set(database=str(path))
    return url.render_as_string(hide_password=False)


def read_database(source: str, root: Path, task: str = "classify") -> pd.DataFrame:
    """Every stored feedback row of `task`, read through the accounts store (nothing is migrated or written)."""
    url = database_url(source, root)
    store = None
    try:
        store = Accounts(url, {})  # no plans: reading feedback prices nothing
        rows = store.feedback_rows(task=task)
    except Exception as exc:  # drivers raise many types; all mean "cannot read feedback here"
        reason = exc.problem if isinstance(exc, FrugalError) else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"Feedback database {shown(source)} could not be read: {reason}", DB_FIX) from None
    finally:
        if store is not None:
            store.close()
    return rows_frame(rows)


def rows_frame(rows: list[Any]) -> pd.DataFrame:
    """FeedbackRow objects as a frame of COLUMNS (the key that sent each is left out: training needs no customer ids)."""
    frame = pd.DataFrame([(r.text, r.label, r.created_at) for r in rows], columns=COLUMNS)
    return frame.assign(created_at=pd.to_datetime(frame["created_at"], utc=True))


def _read_file(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"Feedback file {path} does not exist.", FILE_FIX)
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding_errors="replace")
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, ValueError, OSError) as exc:
        raise DataError(f"Feedback file {path} could not be read: {exc}", FILE_FIX) from None
    raise DataError(f"Feedback file {path} has an unsupported type {path.suffix!r}.", FILE_FIX)


def _typed(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    missing = [c for c in ("text", "label") if c not in frame.columns]
    if missing:
        raise DataError(
            f"Feedback file {where} has no column {', '.join(map(repr, missing))} (columns: {', '.join(map(str, frame.columns))}).",
            FILE_FIX,
        )
    raw = frame["created_at"] if "created_at" in frame else pd.Series(None, index=frame.index, dtype=object)
    created = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
    bad = created.isna() & raw.notna()
    if bad.any():
        raise DataError(
            f"Feedback file {where}: {int(bad.sum())} created_at value(s) are not times, e.g. {raw[bad].iloc[0]!r}.",
            "Write created_at as ISO 8601 (2025-06-01T12:00:00+00:00), or leave it empty (then the row counts as oldest).",
        )
    return pd.DataFrame({"text": frame["text"], "label": frame["label"], "created_at": created})


def write(frame: pd.DataFrame, out: Path, task: str = "classify") -> None:
    """Feedback rows as CSV or Parquet (by the suffix): the file data.feedback reads back. task generate: the columns are
    named for what they hold, prompt and response (a corrected response; load_feedback reads them back as text/label)."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"Cannot export feedback to {out}: unsupported type {out.suffix!r}.", "Name a .csv or .parquet file.")
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = frame[COLUMNS]
    if suffix == ".csv":
        iso = frame["created_at"].map(lambda t: t.isoformat() if pd.notna(t) else "")  # 2025-06-01T12:00:00+00:00
        frame = frame.assign(created_at=iso)
    if task == "generate":
        frame = frame.rename(columns={"text": "prompt", "label": "response"})
    if suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
