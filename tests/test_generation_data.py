"""Prompt/response data (task: generate): the embedded BBC headlines, files, cleaning, feedback, validation and the prepare stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from helpers import shrink

from frugal.config import RunConfig, load_config
from frugal.errors import DataError, ValidationFailed
from frugal.paths import ProjectPaths
from ml.data import SPLITS, read_split
from ml.generation.data import add_pair_feedback, clean, load_pairs, split, write_pairs
from tasks.prepare import Staged, prepare
from tasks.validate import validate


@pytest.fixture(scope="module")
def gen_cfg() -> RunConfig:
    return load_config("generate-smoke")


def file_cfg(cfg: RunConfig, path: Path, **generate: object) -> RunConfig:
    return shrink(cfg, data={"source": "file", "path": str(path)}, generate=generate)


def pairs(*rows: tuple[object, object]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["prompt", "response"])


def good_splits(cfg: RunConfig) -> dict[str, pd.DataFrame]:
    return split(pairs(*((f"Summarise item {i}:\nits text", f"Item {i}") for i in range(120))), cfg)


def staged(frames: dict[str, pd.DataFrame], store: ProjectPaths, run_id: str) -> Staged:
    return Staged(run_id=run_id, rows=write_pairs(frames, Staged(run_id=run_id, rows={}).dir(store)))


def test_embedded_bbc_headlines_from_the_installed_package(gen_cfg: RunConfig) -> None:
    cfg = shrink(gen_cfg, generate={"input_words": 60})
    raw = load_pairs(cfg, Path("."))
    assert len(raw) > 2000 and list(raw.columns) == ["prompt", "response"]
    assert (raw["prompt"].str.strip() != "").all() and (raw["response"].str.strip() != "").all()
    first = raw.iloc[0]  # business/001.txt: line 1 is the headline, the article follows
    assert first["response"] == "Ad sales boost Time Warner profit"
    intro, article = first["prompt"].split("\n\n")
    assert intro == "Write a one-line headline for this news article." and len(article.split()) == 60
    assert raw["prompt"].str.contains("£15.8m signing", regex=False).any()  # the one Windows-1252 article decoded


def test_a_file_with_its_own_columns(tmp_path: Path, gen_cfg: RunConfig) -> None:
    path = tmp_path / "qa.csv"
    pd.DataFrame({"question": ["What is 2+2?", "Capital of France?"], "answer": ["4", "Paris"], "extra": [1, 2]}).to_csv(path)
    raw = load_pairs(file_cfg(gen_cfg, path, prompt_column="question", response_column="answer"), tmp_path)
    assert raw.to_dict("records") == [{"prompt": "What is 2+2?", "response": "4"}, {"prompt": "Capital of France?", "response": "Paris"}]


def test_a_missing_response_column_names_it_and_the_keys(tmp_path: Path, gen_cfg: RunConfig) -> None:
    path = tmp_path / "qa.jsonl"
    pd.DataFrame({"prompt": ["a"], "reply": ["b"]}).to_json(path, orient="records", lines=True)
    with pytest.raises(DataError, match=r"no column 'response' \(columns: prompt, reply\)") as err:
        load_pairs(file_cfg(gen_cfg, path), tmp_path)
    assert "generate.response_column" in err.value.fix


def test_clean_drops_empty_duplicate_and_overlong_rows_and_counts_each(gen_cfg: RunConfig) -> None:
    cfg = shrink(gen_cfg, generate={"max_prompt_tokens": 20, "max_response_tokens": 10}, data={"max_rows": None})
    raw = pairs(
        ("Title:\r\n\n\n  the  text\x07 ", " A\theadline "),  # kept, normalised: newlines stay, one blank line at most
        ("Title:\n\nthe text", "a duplicate prompt"),
        (" ", "no prompt"),
        ("no response", None),
        ("x" * 21, "a prompt over 20"),
        ("short", "a response over ten"),
        ("fine", "fine"),
    )
    frame, report = clean(raw, cfg, count_tokens=len)  # one token per character
    assert frame.to_dict("records") == [{"prompt": "Title:\n\nthe text", "response": "A headline"}, {"prompt": "fine", "response": "fine"}]
    assert report == {"rows_raw": 7, "repaired_undecodable": 0, "removed_empty_prompt": 1, "removed_empty_response": 1,
                      "removed_duplicate_prompt": 1, "removed_long_prompt": 1, "removed_long_response": 1, "rows_clean": 2}  # fmt: skip
    counted = clean(raw, cfg, count_tokens=len, count_prompt_tokens=lambda p: len(p) + 12)[1]  # a chat template's overhead
    assert counted["removed_long_prompt"] == 2


def test_max_rows_is_a_seeded_sample_and_the_split_is_seeded(gen_cfg: RunConfig) -> None:
    raw = pairs(*((f"prompt {i}", f"response {i}") for i in range(300)))
    frame, report = clean(raw, gen_cfg)
    assert report["removed_max_rows_cap"] == 100 and frame.equals(clean(raw, gen_cfg)[0])
    splits = split(frame, gen_cfg)
    assert {k: len(v) for k, v in splits.items()} == {"train": 160, "val": 20, "test": 20}
    assert all(splits[s].equals(split(frame, gen_cfg)[s]) for s in SPLITS)
    assert sum(len(set(splits[a]["prompt"]) & set(splits[b]["prompt"])) for a, b in [("train", "val"), ("train", "test")]) == 0


def test_feedback_corrects_a_response_or_adds_a_pair(tmp_path: Path, gen_cfg: RunConfig) -> None:
    feedback = tmp_path / "feedback.csv"  # the columns `frugal feedback export --task generate` writes
    pd.DataFrame(
        {"prompt": ["Q one\n\nbody", "Q one\n\nbody", "Q new"], "response": ["old fix", "Better one", "New answer"],
         "created_at": ["2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00", ""]}
    ).to_csv(feedback, index=False)  # fmt: skip
    cfg = shrink(gen_cfg, data={"feedback": str(feedback)})
    base = pairs(("Q one\n\nbody", "One"), ("Q two", "Two"))
    merged, report = add_pair_feedback(base, cfg.data, tmp_path)
    assert merged[["prompt", "response"]].to_dict("records") == [
        {"prompt": "Q one\n\nbody", "response": "Better one"}, {"prompt": "Q two", "response": "Two"},
        {"prompt": "Q new", "response": "New answer"}]  # fmt: skip
    assert report["feedback_relabelled"] == 1 and report["feedback_new"] == 1 and report["feedback_conflicting"] == 1


def test_feedback_from_the_serving_database_takes_the_generate_rows_only(tmp_path: Path, gen_cfg: RunConfig) -> None:
    from frugal.accounts.store import Accounts
    from frugal.config.serve import load_settings

    store = Accounts(f"sqlite:///{tmp_path / 'serve.db'}", load_settings("serve").plans)
    store.migrate()
    _, key = store.create_key(name="acme", plan="starter")
    store.add_feedback(key, "A corrected headline", text="Q two", task="generate")
    store.add_feedback(key, "positive", text="Q one\n\nbody")  # a classifier's label: not a response
    store.close()
    cfg = shrink(gen_cfg, data={"feedback": f"sqlite:///{tmp_path / 'serve.db'}"})
    merged, report = add_pair_feedback(pairs(("Q one\n\nbody", "One"), ("Q two", "Two")), cfg.data, tmp_path)
    assert merged[["prompt", "response"]].to_dict("records") == [
        {"prompt": "Q one\n\nbody", "response": "One"}, {"prompt": "Q two", "response": "A corrected headline"}]  # fmt: skip
    assert report["feedback_rows"] == 1


def test_good_splits_pass_validation(gen_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    stats = validate.fn(staged(good_splits(gen_cfg), store, parent_run), gen_cfg, store, parent_run)
    assert all(stats[s]["unsuccessful_expectations"] == 0 for s in SPLITS)


def test_an_empty_response_fails_validation(gen_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    frames = good_splits(gen_cfg)
    frames["val"].loc[0, "response"] = ""
    with pytest.raises(ValidationFailed, match="1 of 12 val responses are shorter than 1 characters") as err:
        validate.fn(staged(frames, store, parent_run), gen_cfg, store, parent_run)
    assert "validation.text_min_chars" in err.value.fix


def test_a_prompt_in_two_splits_fails_validation(gen_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    frames = good_splits(gen_cfg)
    frames["test"] = pd.concat([frames["test"], frames["val"].head(2)], ignore_index=True)
    with pytest.raises(ValidationFailed, match="2 of 14 test prompts also appear in train or val") as err:
        validate.fn(staged(frames, store, parent_run), gen_cfg, store, parent_run)
    assert "data.split" in err.value.fix


def test_prepare_stages_pairs_of_the_smoke_config(gen_cfg: RunConfig, store: ProjectPaths, parent_run: str) -> None:
    result = prepare.fn(gen_cfg, store, parent_run)
    frames = {s: read_split(result.dir(store), s) for s in SPLITS}
    assert result.rows == {"train": 160, "val": 20, "test": 20} and all(list(f.columns) == ["prompt", "response"] for f in frames.values())
    validate.fn(result, gen_cfg, store, parent_run)
