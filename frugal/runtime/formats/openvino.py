"""The ``openvino`` format: ``model.xml`` + ``model.bin`` (OpenVINO IR), run by OpenVINO's CPU plugin, which loads it as it is.

The manifest's ``dtype`` says the compute: ``int8`` (NNCF static int8), ``float32`` (inference precision f32:
the same numbers as PyTorch to float rounding) or ``bfloat16`` (f32 weights, bf16 compute where the CPU has
AVX512-BF16 or AMX). Neither torch nor transformers is imported: an OpenVINO bundle serves with openvino + tokenizers.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np

from frugal.runtime.manifest import Manifest
from frugal.runtime.predictor import Predictor
from frugal.runtime.registry import Format, register

GRAPH = "model.xml"  # + model.bin beside it


class OpenVinoPredictor(Predictor):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import openvino as ov

        super().__init__(model_dir, manifest)
        if device != "cpu":
            raise ValueError(f"the openvino format is served on the CPU here, not {device}")
        # One inference at a time on `threads` cores, as every other runtime is measured; f32 unless the model says bf16
        # (OpenVINO would otherwise run an fp32 model in bf16 on a CPU that has it, and the figures would not be fp32's).
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                                  "INFERENCE_PRECISION_HINT": "bf16" if manifest.dtype == "bfloat16" else "f32"}  # fmt: skip
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(Path(model_dir) / GRAPH), "CPU", config)
        self._inputs = {i.get_any_name() for i in self.compiled.inputs}
        self._local = threading.local()  # an infer request is not thread-safe: one per serving thread

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({k: v for k, v in batch.items() if k in self._inputs})
        return np.asarray(result["logits"])


def save_ir(model: Any, dst: Path, manifest: Manifest) -> None:
    """An OpenVINO model (in memory, or the path of an .xml with its .bin) saved as model.xml + model.bin, with the manifest."""
    import openvino as ov

    if isinstance(model, str | Path):
        shutil.copy(model, dst / GRAPH)
        shutil.copy(Path(model).with_suffix(".bin"), dst / "model.bin")
    else:
        ov.save_model(model, str(dst / GRAPH), compress_to_fp16=False)  # weights as they are: int8 stays int8, fp32 fp32
    manifest.save(dst)


register(Format("openvino", "OpenVINO IR (model.xml + model.bin) for OpenVINO's CPU plugin", OpenVinoPredictor, save_ir,
                ("openvino", "tokenizers"), standard="openvino"))  # fmt: skip
