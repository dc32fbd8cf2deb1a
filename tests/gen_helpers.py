"""Tiny generative models for tests: a byte-level BPE tokenizer trained in code and random Llamas, saved as causal-hf."""

from __future__ import annotations

import json
from pathlib import Path

from frugal.runtime.manifest import TOKENIZER_DIR, Manifest

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "Summarise the article in one headline.",
    "Markets rallied as the central bank held interest rates steady on Tuesday.",
    "The football club signed a new striker for a record fee.",
    "Scientists found water ice near the lunar south pole.",
] * 4


def write_tokenizer(tok_dir: Path, vocab_size: int = 300, corpus: list[str] | None = None) -> None:
    """A byte-level BPE tokenizer (tokenizer.json) with ChatML specials and a chat template (tokenizer_config.json)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus or CORPUS, trainer)
    tok_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(tok_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
              "bos_token": None, "chat_template": CHATML}  # fmt: skip
    (tok_dir / "tokenizer_config.json").write_text(json.dumps(config))


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 64):  # noqa: ANN201 (torch imported lazily)
    """A random LlamaForCausalLM small enough to build, convert and decode in well under a second (tied embeddings, as SmolLM2)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger than the init's 0.02 std: a random model whose greedy picks are not near-ties
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2)
    return model


def save_tiny_causal(dst: Path, tok_dir: Path, seed: int = 0, layers: int = 2, chat: bool = True) -> Path:
    """A tiny random Llama saved as a causal-hf folder with the tokenizer of `tok_dir`."""
    import shutil

    from tokenizers import Tokenizer

    from frugal.runtime.formats.causal import save_causal

    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    model = tiny_llama(tokenizer.get_vocab_size(), seed, layers)
    eos = [tokenizer.token_to_id("<|im_end|>")]
    manifest = Manifest(format="causal-hf", labels=[], max_length=256, params=sum(p.numel() for p in model.parameters()),
                        task="generate", notes={"chat": chat, "eos_token_ids": eos})  # fmt: skip
    save_causal(model, dst, manifest)
    shutil.copytree(tok_dir, dst / TOKENIZER_DIR, dirs_exist_ok=True)
    return dst


def write_gguf(path: Path, architecture: str) -> Path:
    """A minimal GGUF file of `architecture` (one tensor): what a loader must refuse when transformers cannot read it."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
