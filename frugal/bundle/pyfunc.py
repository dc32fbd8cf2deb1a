"""The MLflow pyfunc that serves a frugal model folder: `mlflow models serve` loads this."""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc
import pandas as pd

from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import load_generator, load_predictor


class FrugalClassifier(mlflow.pyfunc.PythonModel):
    """Serves either task, as its manifest says (the name stays: bundles already registered import it).

    A classifier: input a DataFrame with a `text` column (or a list of strings); output label + one probability per class.
    A generative model: input a `prompt` column (or a list of strings); output `response`, `prompt_tokens`,
    `completion_tokens`, greedy, `FRUGAL_MAX_NEW_TOKENS` new tokens at most (default: the value evaluation used).
    """

    def load_context(self, context: Any) -> None:
        threads = int(os.environ.get("FRUGAL_THREADS", "0")) or None
        self.batch_size = int(os.environ.get("FRUGAL_BATCH_SIZE", "32"))
        folder = context.artifacts["model"]
        self.manifest = Manifest.load(folder)
        if self.manifest.task == "generate":
            self.generator = load_generator(folder, threads=threads)
            self.max_new_tokens = int(os.environ.get("FRUGAL_MAX_NEW_TOKENS", "0")) or int(self.manifest.notes.get("max_new_tokens", 64))
        else:
            self.predictor = load_predictor(folder, threads=threads)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads type hints as a schema
        if self.manifest.task == "generate":
            return self._generate(model_input)
        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        proba = self.predictor.predict_proba([str(t) for t in texts], self.batch_size)
        labels = self.predictor.labels
        out = pd.DataFrame({f"p_{label}": proba[:, i] for i, label in enumerate(labels)})
        out.insert(0, "label", [labels[i] for i in proba.argmax(axis=1)])
        return out

    def _generate(self, model_input: Any) -> pd.DataFrame:
        prompts = model_input["prompt"] if isinstance(model_input, pd.DataFrame) else model_input
        answers = [self.generator.generate(str(p), self.max_new_tokens) for p in prompts]
        return pd.DataFrame(
            {
                "response": [a.text for a in answers],
                "prompt_tokens": [a.prompt_tokens for a in answers],
                "completion_tokens": [a.output_tokens for a in answers],
            }
        )
