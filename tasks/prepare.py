"""prepare: the config's source, cleaned and split (ml/prepare.py; task generate: ml/generation/data.py), staged as Parquet files for
validation."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from frugal.config import RunConfig
from frugal.paths import ProjectPaths
from ml.data import summary, write_splits
from ml.generation.data import TokenCounter, prepared_pairs, write_pairs
from ml.generation.modeling import check_tokenizer, tokenizer_for
from ml.generation.modeling import token_counters as token_counters_of
from ml.prepare import prepared
from tasks.plumbing import tracking
from tasks.plumbing.refs import Ref
from tasks.plumbing.stage import stage

log = logging.getLogger(__name__)


class Staged(Ref):
    """Splits prepared by this pipeline run and not yet validated: they live in the run's staging folder."""

    run_id: str
    rows: dict[str, int]

    def dir(self, paths: ProjectPaths) -> Path:
        return paths.work / "staging" / self.run_id


@stage(name="prepare", retries=2)
def prepare(cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> Staged:
    """Load (and merge data.feedback into), clean and split the data into this run's staging folder; log the cleaning report."""
    if cfg.task == "generate":
        splits, report = prepared_pairs(cfg, paths.root, *token_counters(cfg))
    else:
        splits, report = prepared(cfg, paths.root)
    staged = Staged(run_id=parent_run, rows={})
    shutil.rmtree(staged.dir(paths), ignore_errors=True)
    rows = (write_pairs if cfg.task == "generate" else write_splits)(splits, staged.dir(paths))
    log.info("Cleaning: %s rows in, %s kept (%s)", report["rows_raw"], report["rows_clean"], summary(report) or "nothing removed")
    tracking.log_metrics(parent_run, {**report, **{f"rows_{k}": v for k, v in rows.items()}})
    tracking.log_json(parent_run, report, "data/cleaning_report.json")
    return Staged(run_id=parent_run, rows=rows)


def token_counters(cfg: RunConfig) -> tuple[TokenCounter | None, TokenCounter | None]:
    """generate.max_prompt_tokens / max_response_tokens count the model's own tokens: (response counter, prompt counter after
    the chat template). A tokenizer without the chat template `generate.chat` asks for fails here, before any data is written."""
    tokenizer = tokenizer_for(cfg.model)
    check_tokenizer(tokenizer, cfg.generate.chat)
    return token_counters_of(tokenizer, cfg.generate.chat)
