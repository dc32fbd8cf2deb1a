"""The MLflow pyfunc that serves a frugal model folder: `mlflow models serve` loads this."""

from __future__ import annotations

import os
from typing import Any

import mlflow.pyfunc
import pandas as pd

from frugal.runtime.registry import load_predictor


class FrugalClassifier(mlflow.pyfunc.PythonModel):
    """Input: a DataFrame with a `text` column (or a list of strings). Output: label + one probability per class."""

    def load_context(self, context: Any) -> None:
        threads = int(os.environ.get("FRUGAL_THREADS", "0")) or None
        self.batch_size = int(os.environ.get("FRUGAL_BATCH_SIZE", "32"))
        self.predictor = load_predictor(context.artifacts["model"], threads=threads)

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow reads type hints as a schema
        texts = model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input
        proba = self.predictor.predict_proba([str(t) for t in texts], self.batch_size)
        labels = self.predictor.labels
        out = pd.DataFrame({f"p_{label}": proba[:, i] for i, label in enumerate(labels)})
        out.insert(0, "label", [labels[i] for i in proba.argmax(axis=1)])
        return out
