"""The PyTorch formats: ``hf`` (transformers), ``hf-resized``, ``torch-int8`` and ``hf-nf4``; their predictor, save and load.

- ``hf``: ``config.json`` + ``model.safetensors`` whose config describes every weight's shape, so transformers'
  ``AutoModelForSequenceClassification.from_pretrained`` loads it as it is (and so does any stack built on it).
- ``hf-resized``: the same files, but some Linear layers are smaller than any transformers config can say (attention
  heads removed per layer: transformers 5 has no ``pruned_heads``). frugal's own: ``load_torch`` sizes each layer from
  its saved tensor; to take it elsewhere, convert it (onnx_export, onnx_int8), whose output is a standard ONNX file.
- ``torch-int8``: dynamic int8 Linear weights stored as int8 tensors + scales in safetensors (frugal's own).
- ``hf-nf4``: a transformers save with bitsandbytes 4-bit weights (CUDA only).

torch, transformers and safetensors are imported inside the functions: the registry reads this module
without them, and a bundle of another format never needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from frugal.runtime.manifest import Manifest
from frugal.runtime.predictor import Predictor
from frugal.runtime.registry import Format, register

if TYPE_CHECKING:
    import torch

WEIGHTS = "model.safetensors"
TORCH = ("torch", "transformers", "safetensors", "tokenizers")


class TorchPredictor(Predictor):
    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import torch

        super().__init__(model_dir, manifest)
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device(device)
        model = load_torch(model_dir)
        self.model = model if manifest.format == "hf-nf4" else model.to(self.device)
        self._torch = torch

    def logits(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        inputs = {k: torch.from_numpy(v).to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            return self.model(**inputs).logits.float().cpu().numpy()


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
    save_model(model, str(dst / WEIGHTS), metadata={"format": "pt"})  # transformers reads only safetensors marked "pt"
    manifest.save(dst)


def config_matches(model: torch.nn.Module) -> bool:
    """Whether the model's own config builds every one of its weights in the same shape: then its `hf` folder is
    loadable by plain transformers; otherwise it is `hf-resized` (built on the meta device: no memory, no time)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    with torch.device("meta"):
        built = AutoModelForSequenceClassification.from_config(model.config)
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return mine == {k: tuple(v.shape) for k, v in built.state_dict().items()}


def torch_format(model: torch.nn.Module) -> str:
    """``hf`` when the config says every shape, else ``hf-resized`` (what a structural edit saves as)."""
    return "hf" if config_matches(model) else "hf-resized"


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
    """Load an ``hf``, ``hf-resized``, ``torch-int8`` or ``hf-nf4`` model folder into an eval-mode PyTorch module."""
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


def _save_nf4(model: torch.nn.Module, dst: Path, manifest: Manifest) -> None:
    model.save_pretrained(dst)
    manifest.save(dst)


register(Format("hf", "transformers config.json + model.safetensors", TorchPredictor, save_hf, TORCH, standard="transformers"))
register(Format("hf-resized", "hf files whose Linears are smaller than the config says (heads pruned per layer; frugal's own)",
                TorchPredictor, save_hf, TORCH, standard=None))  # fmt: skip
register(Format("torch-int8", "dynamic int8 Linear weights + scales in safetensors (frugal's own)", TorchPredictor, save_int8, TORCH,
                standard=None))  # fmt: skip
register(Format("hf-nf4", "transformers save with bitsandbytes 4-bit weights (CUDA only)", TorchPredictor, _save_nf4,
                (*TORCH, "bitsandbytes", "accelerate"), standard="transformers"))  # fmt: skip
