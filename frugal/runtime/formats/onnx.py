"""The ``onnx`` format: ``model.onnx`` (+ ``config.json`` for reference) run by ONNX Runtime, which loads it as it is.

Neither torch nor transformers is imported: an ONNX bundle serves with onnxruntime + tokenizers alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from frugal.runtime.manifest import Manifest
from frugal.runtime.predictor import Predictor
from frugal.runtime.registry import Format, register

GRAPH = "model.onnx"


class OnnxPredictor(Predictor):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import onnxruntime as ort

        super().__init__(model_dir, manifest)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(Path(model_dir) / GRAPH), options, providers=providers)
        self._inputs = {i.name for i in self.session.get_inputs()}

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in batch.items() if k in self._inputs}
        return self.session.run(["logits"], feeds)[0]


def save_graph(graph: Path, dst: Path, manifest: Manifest) -> None:
    """Place an ONNX graph file (written by an export or a quantizer) in the folder, with the manifest."""
    shutil.copy(graph, dst / GRAPH)
    manifest.save(dst)


register(Format("onnx", "model.onnx for ONNX Runtime", OnnxPredictor, save_graph, ("onnxruntime", "tokenizers"), standard="onnxruntime"))
