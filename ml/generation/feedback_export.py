"""A generative model's feedback as prompt/response rows: what `frugal feedback export --task generate` writes.

The serving API stores a corrected response as a feedback row of task "generate" (its prompt as the row's text, the
response as its label: frugal/accounts/models.py). Exported, the columns are named for what they hold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from frugal.errors import DataError

COLUMNS = ["prompt", "response", "created_at"]


def rows_frame(rows: list[Any]) -> pd.DataFrame:
    """FeedbackRow objects of task "generate" as a frame of COLUMNS (the key that sent each is left out)."""
    frame = pd.DataFrame([(r.text, r.label, r.created_at) for r in rows], columns=COLUMNS)
    return frame.assign(created_at=pd.to_datetime(frame["created_at"], utc=True))


def write(frame: pd.DataFrame, out: Path) -> None:
    """The rows as CSV (created_at in ISO 8601) or Parquet, by the suffix."""
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise DataError(f"Cannot export feedback to {out}: unsupported type {out.suffix!r}.", "Name a .csv or .parquet file.")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        iso = frame["created_at"].map(lambda t: t.isoformat() if pd.notna(t) else "")
        frame[COLUMNS].assign(created_at=iso).to_csv(out, index=False)
    else:
        frame[COLUMNS].to_parquet(out, index=False)
