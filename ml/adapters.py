"""LoRA adapters for fine-tuning: wrap a model (QLoRA: a 4-bit copy of it), and merge the trained adapters back.

Merged, the baseline is a plain `hf` folder whether it trained every weight or adapters only.
"""

from __future__ import annotations

from pathlib import Path

from frugal.config import AdapterConfig, FinetuneConfig
from frugal.errors import ConfigError
from ml.training import resolve_device


def check_4bit(cfg: FinetuneConfig) -> None:
    """QLoRA needs bitsandbytes' CUDA kernels: one clear error on any other machine (the baseline cannot be skipped)."""
    import importlib.util

    if resolve_device(cfg.device) != "cuda":
        raise ConfigError(
            "finetune.adapter.quantize_4bit (QLoRA) needs a CUDA device; this fine-tune runs on the CPU.",
            "Set finetune.adapter.quantize_4bit: false (plain LoRA) or run the finetune stage on a CUDA machine.",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("finetune.adapter.quantize_4bit (QLoRA) needs bitsandbytes.", "pip install -e '.[gpu]'")


def lora_config(adapter: AdapterConfig, causal: bool = False):  # -> peft.LoraConfig
    from peft import LoraConfig, TaskType

    # SEQ_CLS also trains the new classifier head in full (peft's modules_to_save); CAUSAL_LM: a causal LM (task: generate).
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_CLS, r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
    )  # fmt: skip


def with_adapter(net, adapter: AdapterConfig, base_dir: Path, causal: bool = False):  # -> peft.PeftModel
    """`net` wrapped with LoRA adapters; with quantize_4bit, a 4-bit copy of it (`net` is kept in `base_dir` for the merge).

    `causal`: `net` is a causal LM (task: generate), not a classifier.
    """
    from peft import get_peft_model

    if adapter.quantize_4bit:
        import torch
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        net.save_pretrained(base_dir)  # the fp32 weights with this seed's head: the adapters are merged into these
        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.bfloat16
        )
        net = _auto_class(causal).from_pretrained(base_dir, quantization_config=quantization, device_map="cuda")
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    try:
        return get_peft_model(net, lora_config(adapter, causal))
    except ValueError as exc:  # peft knows no default target modules for this architecture, or a name matches no layer
        raise ConfigError(
            f"LoRA adapters cannot be placed on {type(net).__name__}: {exc}",
            "Set finetune.adapter.target_modules to the names of the model's attention Linear layers.",
        ) from None


def merged(net, adapter: AdapterConfig, base_dir: Path, causal: bool = False):  # -> torch.nn.Module
    """The fine-tuned model with its adapters merged into fp32 weights: a plain transformers model that serves as any other.

    After QLoRA the adapters (and head) are merged into the fp32 weights they were trained over, reloaded from `base_dir`,
    not into the 4-bit copy, whose weights would have to be dequantized with their rounding error.
    """
    if not adapter.quantize_4bit:
        return net.merge_and_unload().eval()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    trained = {k: v.float().cpu() for k, v in get_peft_model_state_dict(net).items()}
    base = _auto_class(causal).from_pretrained(base_dir)
    fp32 = get_peft_model(base, lora_config(adapter, causal))
    set_peft_model_state_dict(fp32, trained)
    return fp32.merge_and_unload().eval()


def _auto_class(causal: bool):  # -> a transformers Auto class
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForCausalLM if causal else AutoModelForSequenceClassification
