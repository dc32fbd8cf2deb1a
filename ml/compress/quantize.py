"""Post-training int8 quantization by each runtime: ONNX Runtime (dynamic or static QDQ) and OpenVINO + NNCF (static).

Shared by the methods that quantize (onnx_int8, openvino, int8, which races them). Each takes an fp32 ONNX graph
(ml/compress/onnx.py exports one) and calibration texts where the ranges are static.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from frugal.runtime import Tokenize
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import save_model
from ml.compress.onnx import export, finish


class _Calibration:
    """Feeds batches of texts to ONNX Runtime's static calibrator."""

    def __init__(self, tokenize: Tokenize, texts: list[str], input_names: set[str], batch_size: int = 16) -> None:
        self._batches = iter(
            [{k: v for k, v in tokenize(texts[i : i + batch_size]).items() if k in input_names} for i in range(0, len(texts), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def ort_int8(
    fp32: Path, out: Path, mode: str, tokenize: Tokenize, calibration: list[str], per_channel: bool = True,
    quantize_embeddings: bool = True, calibration_method: str = "minmax",
) -> None:  # fmt: skip
    """ONNX Runtime int8 of the graph `fp32`: `dynamic` (weights int8, activations quantized per call) or `static`
    (QDQ, activation ranges calibrated on `calibration` texts)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = ["MatMul", "Attention", *(["Gather", "EmbedLayerNormalization"] if quantize_embeddings else [])]
    # Fused ops (com.microsoft domain) defeat shape inference; their outputs are float.
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    if mode == "dynamic":
        quantize_dynamic(
            str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=ops, extra_options=extra
        )
        return
    names = {i.name for i in onnx.load(str(fp32), load_external_data=False).graph.input}
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    quantize_static(
        str(fp32), str(out), _Calibration(tokenize, calibration, names), quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel,
        op_types_to_quantize=["MatMul", *(["Gather"] if quantize_embeddings else [])],
        calibrate_method=method[calibration_method], extra_options=extra,
    )  # fmt: skip


def openvino_ir(fp32: Path) -> Any:
    """The ONNX graph as an OpenVINO model (fp32 weights; dynamic batch and sequence axes kept)."""
    import openvino as ov

    return ov.convert_model(str(fp32))


def openvino_int8(fp32: Path, tokenize: Tokenize, calibration: list[str], preset: str = "mixed") -> Any:
    """OpenVINO + NNCF static int8 of the graph `fp32`: ranges from `calibration`, one text per sample, NNCF's transformer
    scheme (it keeps the accuracy-sensitive ops, e.g. softmax and layer norm inputs, in float)."""
    import nncf

    model = openvino_ir(fp32)
    names = {i.get_any_name() for i in model.inputs}
    samples = [{k: v for k, v in tokenize([text]).items() if k in names} for text in calibration]
    presets = {"mixed": nncf.QuantizationPreset.MIXED, "performance": nncf.QuantizationPreset.PERFORMANCE}
    return nncf.quantize(model, nncf.Dataset(samples), preset=presets[preset], model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples))  # fmt: skip


OPENVINO_DTYPES = {"int8": "int8", "fp32": "float32", "bf16": "bfloat16"}


def openvino_folder(src: Path, dst: Path, manifest: Manifest, precision: str, calibration: list[str]) -> None:
    """The OpenVINO folder of the PyTorch folder `src` at `precision` ("int8": NNCF static on `calibration` texts, "fp32",
    "bf16"): the plain ONNX export (OpenVINO reads no ONNX Runtime fusions) converted, saved beside tokenizer and config."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export(src, fp32, opset=17, optimize=False, method="openvino")
        tokenize = Tokenize(src, manifest.max_length)
        model = openvino_int8(fp32, tokenize, calibration) if precision == "int8" else openvino_ir(fp32)
        out = manifest.derive(format="openvino", dtype=OPENVINO_DTYPES[precision], lineage=[*manifest.lineage, f"openvino-{precision}"])
        save_model(model, dst, out)
    finish(src, dst, out)


def ort_folder(src: Path, dst: Path, manifest: Manifest, mode: str, calibration: list[str]) -> None:
    """ONNX Runtime int8 of the PyTorch folder `src`: `dynamic` on the fused export, `static` (QDQ) on the plain one."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export(src, fp32, opset=17, optimize=mode == "dynamic", method=f"int8 onnx-{mode}")
        dst.mkdir(parents=True, exist_ok=True)
        ort_int8(fp32, dst / "model.onnx", mode, Tokenize(src, manifest.max_length), calibration)
    finish(src, dst, manifest.derive(format="onnx", dtype="int8", lineage=[*manifest.lineage, "onnx_export", f"onnx_int8-{mode}"]))
