"""The prepared splits of a config: its source, with `data.feedback` merged in, cleaned and split, in memory."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from frugal.config import RunConfig
from ml.data import clean, load_source, split
from ml.feedback import add_feedback


def prepared(cfg: RunConfig, root: Path) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The source loaded (with data.feedback merged in), cleaned and split; and the cleaning report."""
    raw = load_source(cfg.data, root)
    merged: dict[str, int] = {}
    if cfg.data.feedback:
        raw, merged = add_feedback(raw, cfg.data, root)
    frame, report = clean(raw, cfg.data)
    return split(frame, cfg.data, cfg.seed), {**merged, **report}
