"""`model.source: tiny` for task generate: a small random Llama and a word-level tokenizer, both built in code (tests, smoke runs).

The tokenizer is a WordPiece over a fixed list of common English words plus single letters, letter pairs, digits and
punctuation (each also as a `##` continuation), so any text of those characters encodes with no unknown token: a word off
the list is spelled out in pairs. Its special tokens are ChatML's and it has a ChatML chat template, so `generate.chat: true` works.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING, Any

from frugal.config import ModelConfig

if TYPE_CHECKING:
    import torch

PAD, UNK, IM_START, IM_END = "<pad>", "<unk>", "<|im_start|>", "<|im_end|>"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Common English and business-news words: whole tokens, so typical prompts stay short (the rest is spelled out).
WORDS = """the of and to a in is it that for on was with as at by be this from or are an but not have has had were which
their they he she his her its we you i one two three new more most all after over up out about into than when who will would
can could said says year years first last also been may market markets bank shares profit sales firm company companies
growth economy rates rate price prices oil jobs deal chief plan tax uk us world government people time business news report
summarise summarize article headline write copy reverse answer question text user assistant system""".split()


def tiny_tokenizer() -> Any:  # -> transformers.PreTrainedTokenizerFast
    """The tiny word-level tokenizer with ChatML specials (eos = <|im_end|>, pad = <pad>) and a ChatML chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pairs = [a + b for a in string.ascii_lowercase for b in string.ascii_lowercase]  # words off the list cost half their letters
    spelled = chars + pairs + [f"##{c}" for c in chars + pairs]
    pieces = [PAD, UNK, IM_START, IM_END] + spelled + [w for w in dict.fromkeys(WORDS) if w not in spelled]
    backend = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token=UNK, max_input_chars_per_word=100))
    # Accents stripped and lower case: more text falls on the list (the tiny model is for tests, not for reading).
    backend.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (PAD, UNK, IM_START, IM_END)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=PAD, unk_token=UNK, eos_token=IM_END, bos_token=IM_START)
    tokenizer.chat_template = CHATML
    return tokenizer


def tiny_causal_lm(cfg: ModelConfig, tokenizer: Any, seed: int) -> torch.nn.Module:
    """A random LlamaForCausalLM of model.tiny's size over `tokenizer`'s vocabulary; the same seed builds the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    size = cfg.tiny
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads, max_position_embeddings=cfg.max_length, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)
