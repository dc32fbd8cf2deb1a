"""The Great Expectations suite over the prepared splits: one expectation per rule of the config's `validation:` section."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from frugal.config import RunConfig
from ml.data import SPLITS

# Derived columns let single-table expectations check what GX has no expectation for.
SHARED_WITH_TRAIN = "shared_with_train"
SHARE_PREFIX = "is_label__"


def build_suite(cfg: RunConfig, split: str) -> Any:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    data, rules = cfg.data, cfg.validation
    suite = gx.ExpectationSuite(name=f"{cfg.name}-{split}")
    expectations = [
        gxe.ExpectColumnToExist(column="text"),
        gxe.ExpectColumnToExist(column="label"),
        gxe.ExpectColumnValuesToNotBeNull(column="text"),
        gxe.ExpectColumnValuesToNotBeNull(column="label"),
        gxe.ExpectColumnValueLengthsToBeBetween(column="text", min_value=rules.text_min_chars, max_value=rules.text_max_chars),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(data.labels)),
        gxe.ExpectTableRowCountToBeBetween(min_value=rules.min_rows[split]),
    ]
    expectations += [
        gxe.ExpectColumnMeanToBeBetween(column=f"{SHARE_PREFIX}{label}", min_value=rules.class_share_min, max_value=rules.class_share_max)
        for label in data.labels
    ]
    if split != "train":
        expectations.append(gxe.ExpectColumnValuesToBeInSet(column=SHARED_WITH_TRAIN, value_set=[False]))
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def with_derived_columns(frame: pd.DataFrame, labels: list[str], train_texts: set[str] | None) -> pd.DataFrame:
    derived = {f"{SHARE_PREFIX}{label}": (frame["label"] == label).astype(float) for label in labels} if "label" in frame else {}
    if train_texts is not None and "text" in frame:
        derived[SHARED_WITH_TRAIN] = frame["text"].isin(train_texts)
    return frame.assign(**derived)


def run_suite(frames: dict[str, pd.DataFrame], cfg: RunConfig) -> dict[str, Any]:
    """Validate each split; return {split: GX result as a JSON-able dict}."""
    train_texts = set(frames["train"]["text"]) if "text" in frames["train"] else set()
    derived = {split: with_derived_columns(frames[split], cfg.data.labels, None if split == "train" else train_texts) for split in SPLITS}
    return validate_splits(derived, lambda split: build_suite(cfg, split))


def validate_splits(frames: dict[str, pd.DataFrame], suite_for: Callable[[str], Any]) -> dict[str, Any]:
    """Each split (derived columns added) through its suite in an ephemeral GX context; {split: result as a JSON-able dict}."""
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("frugal")
    results = {}
    for split in SPLITS:
        batch_def = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe(split)
        batch = batch_def.get_batch(batch_parameters={"dataframe": frames[split]})
        results[split] = batch.validate(suite_for(split), result_format="SUMMARY").to_json_dict()
    return results


def failed(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """(split, expectation type, its arguments, its result) of each failed expectation."""
    return [
        (split, item["expectation_config"]["type"], {k: v for k, v in item["expectation_config"]["kwargs"].items() if k != "batch_id"},
         item["result"])
        for split, result in results.items() for item in result["results"] if not item["success"]
    ]  # fmt: skip


def failures(results: dict[str, Any]) -> list[str]:
    """One technical line per failed expectation (GX's names and arguments): the detail the run keeps."""
    lines = []
    for split, kind, kwargs, result in failed(results):
        if len(str(kwargs.get("value_set", ""))) > 80:
            kwargs["value_set"] = "[...]"
        observed = result.get("observed_value", result.get("unexpected_count"))
        lines.append(f"{split}: {kind} {kwargs}" + (f" (observed: {observed})" if observed is not None else ""))
    return lines


def explain(results: dict[str, Any], frames: dict[str, pd.DataFrame], cfg: RunConfig) -> tuple[list[str], list[str]]:
    """Each failure in words, counted on the data itself (what a user reads), and the config keys that set the limits."""
    sentences, keys = [], []
    for split, kind, kwargs, _ in failed(results):
        sentence, key = _in_words(split, kind, kwargs, frames[split], frames["train"], cfg)
        sentences.append(sentence)
        keys += [key] if key not in keys else []
    return sentences, keys


def _in_words(split: str, kind: str, kw: dict[str, Any], frame: pd.DataFrame, train: pd.DataFrame, cfg: RunConfig) -> tuple[str, str]:
    rows, column = len(frame), kw.get("column", "")
    if kind == "expect_column_to_exist":
        return f"the {split} split has no '{column}' column", f"data.{column}_column"
    if kind == "expect_column_values_to_not_be_null":
        return f"{int(frame[column].isna().sum()):,} of {rows:,} {split} rows have no {column}", f"data.{column}_column"
    if kind == "expect_column_value_lengths_to_be_between":
        return length_problem(split, "texts", frame[column].astype(str).str.len(), kw["min_value"], kw["max_value"])
    if kind == "expect_table_row_count_to_be_between":
        return f"the {split} split has {rows:,} rows, fewer than validation.min_rows.{split} = {kw['min_value']:,}", "validation.min_rows"
    if kind == "expect_column_mean_to_be_between" and column.startswith(SHARE_PREFIX):
        label, rules = column.removeprefix(SHARE_PREFIX), cfg.validation
        share = float((frame["label"] == label).mean()) if rows else 0.0
        return (f"label '{label}' is {share:.1%} of the {split} rows, outside {rules.class_share_min:.0%} to {rules.class_share_max:.0%}",
                "validation.class_share_min / class_share_max")  # fmt: skip
    if kind == "expect_column_values_to_be_in_set" and column == SHARED_WITH_TRAIN:
        leaked = int(frame["text"].isin(set(train["text"])).sum())
        return f"{leaked:,} of {rows:,} {split} texts also appear in train (their scores would be inflated)", "data.split"
    if kind == "expect_column_values_to_be_in_set":
        bad = frame.loc[~frame[column].isin(kw["value_set"]), column]
        shown = ", ".join(repr(v) for v in bad.astype(str).unique()[:5])
        return f"{len(bad):,} of {rows:,} {split} {column}s are not in data.labels, e.g. {shown}", "data.labels"
    return f"{split}: {kind} {kw}", "validation"


def length_problem(split: str, noun: str, lengths: pd.Series, shortest: int, longest: int) -> tuple[str, str]:
    """A failed length expectation in words (`noun`: texts, prompts, responses), and the config key that sets the bound."""
    over, under = int((lengths > longest).sum()), int((lengths < shortest).sum())
    parts = []
    if over:
        parts.append(f"{over:,} of {len(lengths):,} {split} {noun} are longer than {longest:,} characters; "
                     f"the longest has {int(lengths.max()):,} characters")  # fmt: skip
    if under:
        parts.append(f"{under:,} of {len(lengths):,} {split} {noun} are shorter than {shortest:,} characters")
    key = "validation.text_max_chars" if over else "validation.text_min_chars"
    return "; ".join(parts), key
