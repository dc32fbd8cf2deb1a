"""The Great Expectations suite over prompt/response splits (task: generate): ml/validation.py's twin for pairs.

Per split: both columns present and filled, lengths within validation.text_min_chars..text_max_chars (prompts and
responses alike), each prompt once, at least validation.min_rows rows; and no val or test prompt in an earlier split
(train; train or val), since a prompt seen in training would inflate its score.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from frugal.config import RunConfig
from ml.data import SPLITS
from ml.generation.data import COLUMNS
from ml.validation import failed, length_problem, validate_splits

SHARED = "shared_with_earlier_split"  # derived: the prompt is also in a split before this one (train < val < test)


def build_suite(cfg: RunConfig, split: str) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    rules = cfg.validation
    suite = gx.ExpectationSuite(name=f"{cfg.name}-{split}")
    expectations: list[Any] = [gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows[split])]
    for column in COLUMNS:
        expectations += [
            gxe.ExpectColumnToExist(column=column),
            gxe.ExpectColumnValuesToNotBeNull(column=column),
            gxe.ExpectColumnValueLengthsToBeBetween(column=column, min_value=rules.text_min_chars, max_value=rules.text_max_chars),
        ]
    expectations.append(gxe.ExpectColumnValuesToBeUnique(column="prompt"))
    if split != "train":
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=SHARED, value_set=[False]))
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def earlier_prompts(frames: dict[str, pd.DataFrame], split: str) -> set[str]:
    """The prompts of the splits before `split`."""
    before = SPLITS[: SPLITS.index(split)]
    return {p for name in before if "prompt" in frames[name] for p in frames[name]["prompt"].dropna()}


def with_derived_columns(frames: dict[str, pd.DataFrame], split: str) -> pd.DataFrame:
    frame = frames[split]
    if split == "train" or "prompt" not in frame:
        return frame
    return frame.assign(**{SHARED: frame["prompt"].isin(earlier_prompts(frames, split))})


def run_suite(frames: dict[str, pd.DataFrame], cfg: RunConfig) -> dict[str, Any]:
    """Validate each split; return {split: GX result as a JSON-able dict}."""
    derived = {split: with_derived_columns(frames, split) for split in SPLITS}
    return validate_splits(derived, lambda split: build_suite(cfg, split))


def explain(results: dict[str, Any], frames: dict[str, pd.DataFrame], cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Each failure in words, counted on the data itself (what a user reads), and the config keys that set the limits."""
    sentences, keys = [], []
    for split, kind, kwargs, _ in failed(results):
        sentence, key = _in_words(split, kind, kwargs, frames)
        sentences.append(sentence)
        keys += [key] if key not in keys else []
    return sentences, keys


def _in_words(split: str, kind: str, kw: dict[str, Any], frames: dict[str, pd.DataFrame]) -> tuple[str, str]:
    frame = frames[split]
    rows, column = len(frame), kw.get("column", "")
    if kind == "expect_table_row_count_to_be_between":
        return f"the {split} split has {rows:,} rows, fewer than validation.min_rows.{split} = {kw['min_value']:,}", "validation.min_rows"
    if kind == "expect_column_to_exist":
        return f"the {split} split has no '{column}' column", f"generate.{column}_column"
    if kind == "expect_column_values_to_not_be_null":
        return f"{int(frame[column].isna().sum()):,} of {rows:,} {split} rows have no {column}", f"generate.{column}_column"
    if kind == "expect_column_value_lengths_to_be_between":
        return length_problem(split, f"{column}s", frame[column].astype(str).str.len(), kw["min_value"], kw["max_value"])
    if kind == "expect_column_values_to_be_unique":
        repeated = int(frame[column].duplicated(keep=False).sum())
        return f"{repeated:,} of {rows:,} {split} rows share their {column} with another {split} row", "validation"
    if kind == "expect_column_values_to_be_in_set" and column == SHARED:
        before = " or ".join(SPLITS[: SPLITS.index(split)])
        leaked = int(frame["prompt"].isin(earlier_prompts(frames, split)).sum())
        return f"{leaked:,} of {rows:,} {split} prompts also appear in {before} (their scores would be inflated)", "data.split"
    return f"{split}: {kind} {kw}", "validation"
