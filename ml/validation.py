"""The Great Expectations suite over the prepared splits: one expectation per rule of the config's `validation:` section."""

from __future__ import annotations

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
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    source = context.data_sources.add_pandas("frugal")
    train_texts = set(frames["train"]["text"]) if "text" in frames["train"] else set()
    results = {}
    for split in SPLITS:
        asset = source.add_dataframe_asset(split)
        batch_def = asset.add_batch_definition_whole_dataframe(split)
        frame = with_derived_columns(frames[split], cfg.data.labels, None if split == "train" else train_texts)
        batch = batch_def.get_batch(batch_parameters={"dataframe": frame})
        results[split] = batch.validate(build_suite(cfg, split), result_format="SUMMARY").to_json_dict()
    return results


def failures(results: dict[str, Any]) -> list[str]:
    """One readable line per failed expectation."""
    lines = []
    for split, result in results.items():
        for item in result["results"]:
            if item["success"]:
                continue
            config = item["expectation_config"]
            kwargs = {k: v for k, v in config["kwargs"].items() if k != "batch_id"}
            if len(str(kwargs.get("value_set", ""))) > 80:
                kwargs["value_set"] = "[...]"
            observed = item["result"].get("observed_value", item["result"].get("unexpected_count"))
            detail = f" (observed: {observed})" if observed is not None else ""
            lines.append(f"{split}: {config['type']} {kwargs}{detail}")
    return lines
