"""The on-disk model folder every stage reads and writes, and how PyTorch models are saved and loaded.

A model folder holds ``frugal.json`` (the manifest: format, labels, lineage), the weights,
and ``tokenizer/``. Formats:

- ``hf``: ``config.json`` + ``model.safetensors``. Linear layers may be smaller than the
  config says (structured pruning); the loader sizes each layer from the saved tensor.
- ``torch-int8``: dynamic int8 Linear weights stored as int8 tensors + scales in safetensors.
- ``onnx``: ``model.onnx`` for ONNX Runtime.
- ``hf-nf4``: a transformers save with bitsandbytes 4-bit weights (CUDA only).
- ``cascade``: ``cheap/`` and ``strong/``, each a model folder of the formats above; the cheap part answers
  when its top probability is >= ``notes.threshold``, else the strong part (``frugal.cascade``). ``params``
  is both parts' sum; ``notes`` also hold the parts' variant names and the val calibration.

Weights are only ever read from safetensors or ONNX: nothing here unpickles.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

MANIFEST = "frugal.json"
TOKENIZER_DIR = "tokenizer"
WEIGHTS = "model.safetensors"
_INT8_SUFFIXES = (".qweight", ".qscale", ".qzero_point")


@dataclass
class Manifest:
    format: str
    labels: list[str]
    max_length: int
    params: int
    dtype: str = "float32"
    lineage: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def save(self, model_dir: Path) -> None:
        (model_dir / MANIFEST).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, model_dir: Path) -> Manifest:
        path = Path(model_dir) / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} is not a frugal model folder (no {MANIFEST})")
        return cls(**json.loads(path.read_text()))

    def derive(self, **changes: Any) -> Manifest:
        """A manifest for a model made from this one by a further step."""
        data = asdict(self) | changes
        return Manifest(**data)


def copy_tokenizer(src_dir: Path, dst_dir: Path) -> None:
    shutil.copytree(Path(src_dir) / TOKENIZER_DIR, Path(dst_dir) / TOKENIZER_DIR, dirs_exist_ok=True)


def model_size_mb(model_dir: Path) -> float:
    """Size on disk of what serving loads besides the tokenizer: weights, graph and config."""
    model_dir = Path(model_dir)
    files = [p for p in model_dir.rglob("*") if p.is_file() and TOKENIZER_DIR not in p.relative_to(model_dir).parts]
    return sum(p.stat().st_size for p in files) / 1e6


def count_params(model: torch.nn.Module) -> int:
    """Parameters, counting a dynamically quantized Linear's packed weight and bias too."""
    import torch

    total = sum(p.numel() for p in model.parameters())
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


def save_hf(model: torch.nn.Module, dst: Path, manifest: Manifest) -> None:
    from safetensors.torch import save_model

    dst.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(dst)
    save_model(model, str(dst / WEIGHTS))
    manifest.save(dst)


def save_torch(model: torch.nn.Module, dst: Path, manifest: Manifest) -> None:
    """Save in the format the manifest names (``hf`` or ``torch-int8``)."""
    (save_int8 if manifest.format == "torch-int8" else save_hf)(model, dst, manifest)


def save_int8(model: torch.nn.Module, dst: Path, manifest: Manifest) -> None:
    """Save a dynamically quantized model: int8 weights, their scales and zero points, fp32 rest."""
    import torch
    from safetensors.torch import save_file

    dst.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    quantized = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            quantized.add(name)
            tensors[f"{name}.qweight"] = weight.int_repr().contiguous()
            if weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
                tensors[f"{name}.qscale"] = weight.q_per_channel_scales().float()
                tensors[f"{name}.qzero_point"] = weight.q_per_channel_zero_points()
            else:
                tensors[f"{name}.qscale"] = torch.tensor([weight.q_scale()], dtype=torch.float32)
                tensors[f"{name}.qzero_point"] = torch.tensor([weight.q_zero_point()], dtype=torch.int64)
            if bias is not None:
                tensors[f"{name}.bias"] = bias.detach().contiguous()
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not any(key.startswith(f"{q}.") for q in quantized):
            tensors[key] = value.contiguous()
    model.config.save_pretrained(dst)
    save_file(tensors, str(dst / WEIGHTS))
    manifest.save(dst)


def load_torch(model_dir: Path) -> torch.nn.Module:
    """Load an ``hf``, ``torch-int8`` or ``hf-nf4`` model folder into an eval-mode PyTorch module."""
    import torch
    from safetensors import safe_open

    model_dir = Path(model_dir)
    manifest = Manifest.load(model_dir)
    if manifest.format == "hf-nf4":  # bitsandbytes 4-bit: transformers restores the quantized layers on CUDA
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(model_dir, device_map="cuda").eval()
    with safe_open(str(model_dir / WEIGHTS), "pt") as handle:
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    model = _build_resized(model_dir, shapes)
    if manifest.format == "torch-int8":
        _load_int8(model, tensors)
    else:
        model.to(getattr(torch, manifest.dtype))
        model.load_state_dict(tensors, strict=True)
    return model.eval()


def _build_resized(model_dir: Path, shapes: dict[str, tuple[int, ...]]) -> torch.nn.Module:
    """Build the architecture from config.json, with each Linear sized like its saved weight."""
    from torch import nn
    from transformers import AutoConfig, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_config(config)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear):
            continue
        shape = shapes.get(f"{name}.weight") or shapes.get(f"{name}.qweight")
        if shape and tuple(shape) != tuple(module.weight.shape):
            model.set_submodule(name, nn.Linear(shape[1], shape[0], bias=module.bias is not None))
    return model


def _load_int8(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    import torch

    names = {key[: -len(".qweight")] for key in tensors if key.endswith(".qweight")}
    rest = {k: v for k, v in tensors.items() if not any(k.startswith(f"{n}.") for n in names)}
    model.load_state_dict(rest, strict=False)
    quantized = quantize_dynamic_int8(model, layer_names=names)
    for name in names:
        scale, zero_point = tensors[f"{name}.qscale"], tensors[f"{name}.qzero_point"]
        int8 = tensors[f"{name}.qweight"]
        if scale.numel() == 1:
            qweight = torch._make_per_tensor_quantized_tensor(int8, float(scale), int(zero_point))
        else:
            qweight = torch._make_per_channel_quantized_tensor(int8, scale.double(), zero_point, 0)
        quantized.get_submodule(name).set_weight_bias(qweight, tensors.get(f"{name}.bias"))


def quantize_dynamic_int8(model: torch.nn.Module, layer_names: set[str] | None = None) -> torch.nn.Module:
    """PyTorch dynamic int8 on Linear layers (all, or those named), in place."""
    import warnings

    import torch

    spec = layer_names if layer_names is not None else {torch.nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao eager quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
