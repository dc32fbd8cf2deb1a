"""The teacher's pass over the training texts (ml/compress/transfer.py), kept on disk by content: the search's candidates
share one teacher and one text list, so only the first reads it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import Built, LocalSplits

from frugal.runtime.formats.torch import load_torch
from ml.compress.transfer import cached_teacher_view, folder_digest


def test_the_teachers_pass_is_read_once_per_teacher_and_texts(baseline: Built, smoke_splits: LocalSplits, tmp_path: Path) -> None:
    texts = list(pd.read_parquet(smoke_splits.path("train"))["text"][:40])
    teacher = load_torch(baseline.model_dir)
    first = cached_teacher_view(tmp_path / "cache", baseline.model_dir, 64, teacher, texts, "cpu", [0], hidden=True)
    assert first.logits.shape[0] == 40 and first.hidden.shape[:2] == (40, 1) and len(list((tmp_path / "cache").iterdir())) == 1

    # The same teacher, copied elsewhere, on the same texts: read from disk (no model is given to compute it with).
    shutil.copytree(baseline.model_dir, tmp_path / "copy")
    again = cached_teacher_view(tmp_path / "cache", tmp_path / "copy", 64, None, texts, "cpu", [0], hidden=True)
    assert np.array_equal(again.logits, first.logits) and np.array_equal(again.hidden, first.hidden)

    # Other texts, another truncation or another teacher: another entry.
    cached_teacher_view(tmp_path / "cache", baseline.model_dir, 64, teacher, texts[:39], "cpu", [0], hidden=True)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    shorter = cached_teacher_view(tmp_path / "cache", baseline.model_dir, 8, teacher, texts, "cpu", [0], hidden=True)
    assert len(list((tmp_path / "cache").iterdir())) == 3 and not np.array_equal(shorter.logits, first.logits)
    (tmp_path / "copy" / "config.json").write_text((tmp_path / "copy" / "config.json").read_text() + " ")
    assert folder_digest(tmp_path / "copy") != folder_digest(baseline.model_dir)
