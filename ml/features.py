"""The cheap learner behind label-noise detection and active learning: fixed text features + logistic regression.

Both need many models (K out-of-fold models; one per active-learning round and strategy). Fine-tuning
the transformer that often costs hours on a CPU, so they fit a linear model on features computed once:
`embeddings` (the configured pretrained model, frozen, its last hidden state mean-pooled over the
tokens: about a minute for 10k tweets on 2 cores, cached on disk) or `tfidf` (word 1-2-grams: seconds,
and the choice for a random `tiny` model, whose embeddings mean nothing). Its numbers rank rows and
strategies; they are not the fine-tuned model's quality.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from frugal.config import ModelConfig
from frugal.hashing import digest
from frugal.paths import ProjectPaths
from frugal.runtime import Tokenize, length_ordered
from ml.modeling import load_pretrained_with_notes, load_tokenizer, mean_pool, save_tokenizer
from ml.training import ensure_pad_token_id

Features = Literal["embeddings", "tfidf"]
BATCH = 64


def featurize(
    kind: Features, fit_texts: list[str], other_texts: list[str], model: ModelConfig, threads: int, paths: ProjectPaths
) -> tuple[Any, Any]:
    """Features of `fit_texts` and `other_texts` (TF-IDF learns its vocabulary from `fit_texts` only: no test words leak in)."""
    if kind == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        return vectorizer.fit_transform(fit_texts), vectorizer.transform(other_texts)
    # each list is cached on its own: the label-noise stage and active learning share the train rows' and the test split's
    return embed(fit_texts, model, threads, paths), embed(other_texts, model, threads, paths)


def embed(texts: list[str], model: ModelConfig, threads: int, paths: ProjectPaths) -> np.ndarray:
    """L2-normalised mean-pooled sentence embeddings, cached under .frugal/cache/embeddings by model and texts."""
    texts_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    cached = paths.work / "cache" / "embeddings" / f"{digest(model, texts_hash)}.npy"
    if cached.is_file():
        return np.load(cached)
    vectors = _embed(texts, model, threads)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{texts_hash[:8]}.tmp.npy")
    np.save(partial, vectors)
    partial.replace(cached)  # a crash mid-write leaves no truncated cache entry
    return vectors


def _embed(texts: list[str], model: ModelConfig, threads: int) -> np.ndarray:
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(model)
        save_tokenizer(tokenizer, Path(tmp))
        net, _ = load_pretrained_with_notes(model, ["a", "b"], seed=0)  # the head is never used: only the encoder's states
        ensure_pad_token_id(net.config, tokenizer)
        net.config.save_pretrained(tmp)
        tokenize = Tokenize(Path(tmp), model.max_length)
    encoder = net.base_model.eval()
    encodings = tokenize.encode(texts)
    out = np.zeros((len(texts), net.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for rows in length_ordered(encodings, BATCH):  # the runtime's batching: little padding
            batch = {k: torch.from_numpy(v) for k, v in tokenize.pad([encodings[i] for i in rows]).items()}
            out[rows] = mean_pool(encoder(**batch).last_hidden_state, batch["attention_mask"]).float().numpy()
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def learner(c: float, seed: int) -> Any:
    """The linear classifier every cheap model is (multinomial logistic regression)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000, random_state=seed)


def fit_score(
    x: Any, y: np.ndarray, x_test: Any, y_test: np.ndarray, classes: int, c: float, seed: int, weights: np.ndarray | None = None
) -> float:
    """Test macro-F1 of the cheap learner trained on (x, y), optionally with per-row weights."""
    return heldout_macro_f1(learner(c, seed).fit(x, y, sample_weight=weights), x_test, y_test, classes)


def heldout_macro_f1(model: Any, x_test: Any, y_test: np.ndarray, classes: int) -> float:
    """Macro-F1 of a fitted cheap learner over all `classes` (a class it never predicts scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_test, model.predict(x_test), average="macro", labels=list(range(classes)), zero_division=0))
