"""The one runtime evaluation and serving share: length-ordered batching, family-aware inputs, repeated timing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Built, LocalSplits

from frugal.measure import measure, spread
from frugal.runtime import Tokenize, length_ordered, load_predictor
from frugal.runtime.manifest import TOKENIZER_DIR
from ml.modeling import embedded_model_path

# Padding changes only which zeros are masked: logits of a text agree to float rounding across batchings.
PROBA_TOLERANCE = 1e-5


def padded_cells(tokenize: Tokenize, texts: list[str], batch_size: int, ordered: bool) -> int:
    encodings = tokenize.encode(texts)
    if ordered:
        batches = length_ordered(encodings, batch_size)
    else:
        batches = [np.arange(i, min(i + batch_size, len(texts))) for i in range(0, len(texts), batch_size)]
    return sum(tokenize.pad([encodings[i] for i in rows])["input_ids"].size for rows in batches)


def test_length_ordered_batching_returns_the_predictions_of_arrival_order(baseline: Built, smoke_splits: LocalSplits) -> None:
    texts = list(pd.read_parquet(smoke_splits.path("test"))["text"])
    predictor = load_predictor(baseline.model_dir, threads=1)
    ordered = predictor.predict_proba(texts, batch_size=8)
    arrival = predictor.predict_proba(texts, batch_size=8, sort_by_length=False)
    one_by_one = np.concatenate([predictor.predict_proba([t], batch_size=1) for t in texts[:10]])
    assert (ordered.argmax(1) == arrival.argmax(1)).all()
    np.testing.assert_allclose(ordered, arrival, atol=PROBA_TOLERANCE)
    np.testing.assert_allclose(ordered[:10], one_by_one, atol=PROBA_TOLERANCE)  # the caller's order, row for row


def test_predict_flagged_marks_exactly_the_texts_cut_to_max_length(baseline: Built) -> None:
    """Serving's truncation flag comes from the tokenization the model ran on: a text is flagged iff it had more tokens."""
    from tokenizers import Tokenizer

    predictor = load_predictor(baseline.model_dir, threads=1)
    limit = predictor.manifest.max_length
    counter = Tokenizer.from_file(str(Path(baseline.model_dir) / TOKENIZER_DIR / "tokenizer.json"))
    counter.no_truncation()
    counter.no_padding()
    texts = ["short", "word " * (limit - 2), "word " * (limit - 1), "word " * (limit + 20)]  # fits, fits exactly, one over, far over
    proba, flagged = predictor.predict_flagged(texts, batch_size=2)
    assert flagged == [len(e.ids) > limit for e in counter.encode_batch(texts)] == [False, False, True, True]
    np.testing.assert_allclose(proba, predictor.predict_proba(texts, batch_size=2), atol=PROBA_TOLERANCE)


def test_length_ordered_batches_pad_fewer_tokens(smoke_splits: LocalSplits, tmp_path: Path) -> None:
    tokenize = Tokenize(model_folder(tmp_path, {"model_type": "bert", "type_vocab_size": 2}), 128)
    texts = list(pd.read_parquet(smoke_splits.path("train"))["text"])
    real = sum(len(e.ids) for e in tokenize.encode(texts))
    ordered, arrival = (padded_cells(tokenize, texts, 32, ordered) for ordered in (True, False))
    assert ordered < arrival
    assert ordered / real < 1.2 < arrival / real  # tweets vary in length: arrival order pads a lot, sorted batches little


def model_folder(tmp_path: Path, config: dict) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(embedded_model_path(), folder / TOKENIZER_DIR, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx"))
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("config", "token_types", "pad_id"),
    [
        ({"model_type": "bert", "type_vocab_size": 2, "pad_token_id": 0}, True, 0),
        ({"model_type": "distilbert", "pad_token_id": 0}, False, 0),
        ({"model_type": "deberta-v2", "type_vocab_size": 0, "pad_token_id": 0}, False, 0),
        ({"model_type": "llama", "pad_token_id": 102}, False, 102),  # a decoder padding with its own token
        ({"model_type": "roberta", "type_vocab_size": 1}, True, 0),  # no pad_token_id: the tokenizer's [PAD]
    ],
)
def test_each_family_gets_its_own_inputs_and_pad_id(tmp_path: Path, config: dict, token_types: bool, pad_id: int) -> None:
    batch = Tokenize(model_folder(tmp_path, config), 16)(["a short one", "a somewhat longer text than the first"])
    assert ("token_type_ids" in batch) is token_types
    assert batch["input_ids"][0, -1] == pad_id and batch["attention_mask"][0, -1] == 0
    assert batch["attention_mask"][1].all()


def test_throughput_is_the_median_of_the_passes(baseline: Built, smoke_splits: LocalSplits) -> None:
    result = measure(str(baseline.model_dir), str(smoke_splits.path("test")), 8, 1, 1, 5, "cpu", passes=3, arrival_order=True)
    metrics = result["metrics"]
    assert len(result["throughput_passes"]) == 3 and len(result["arrival_order_passes"]) == 3
    assert metrics["throughput_per_s"] == pytest.approx(float(np.median(result["throughput_passes"])))
    assert metrics["length_ordering_gain"] == pytest.approx(metrics["throughput_per_s"] / np.median(result["arrival_order_passes"]))
    assert spread([100.0, 80.0, 120.0]) == {"median": 100.0, "spread": pytest.approx(0.4)}
