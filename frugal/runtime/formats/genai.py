"""The ONNX Runtime GenAI format ``causal-ort``: a causal LM as one ONNX graph decoded by onnxruntime-genai's C++ loop.

The folder is what ``onnxruntime_genai.models.builder`` writes (``genai_config.json``, ``model.onnx``,
``model.onnx.data``, its own tokenizer files), plus frugal's ``tokenizer/`` and ``frugal.json`` (task "generate";
notes ``precision``: fp32, int8 or int4 (weight-only ``MatMulNBits``), ``chat``, ``eos_token_ids``). onnxruntime-genai's
own loader reads it as it is. frugal encodes and decodes with ``tokenizer/`` (the same text in, the same ids as every
other format) and hands ids to the graph: the search (greedy), the KV cache and the decode loop are onnxruntime-genai's.

No torch here: a ``causal-ort`` bundle serves with onnxruntime-genai, tokenizers, jinja2 and numpy alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from frugal.runtime.generator import Generator
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import Format, register

GENAI_CONFIG = "genai_config.json"


def genai_config(model_dir: Path, threads: int | None):  # noqa: ANN201 (onnxruntime_genai is imported lazily)
    """The folder's onnxruntime-genai config, with the thread count of its session when one is asked."""
    import onnxruntime_genai as og

    config = og.Config(str(model_dir))
    if threads:  # one decode at a time per request: intra-op threads do the work, inter-op ones would only wait
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return config


def token_logprob(logits: np.ndarray, token: int) -> float:
    """log softmax(logits)[token], computed stably in float64 (float32 logits of a 49k vocabulary lose digits)."""
    row = logits.astype(np.float64)
    top = row.max()
    return float(row[token] - top - np.log(np.exp(row - top).sum()))


class GenAIGenerator(Generator):
    """Greedy decoding with onnxruntime-genai: its Generator steps, frugal reads each chosen token and its log-prob.

    The graph is built for the CPU execution provider (ml/compress/methods/genai.py), so it runs on the CPU whatever
    `device` says."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        import onnxruntime_genai as og

        super().__init__(model_dir, manifest)
        self._og = og
        self.model = og.Model(genai_config(self.model_dir, threads))

    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + max_new_tokens, do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)  # the prefill: the prompt's logits are ready after this
        for _ in range(max_new_tokens):
            logits = generator.get_logits()[0, -1]  # the scores the next token is chosen from (read before it is)
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            yield token, token_logprob(logits, token)
            if token in self.eos_ids or generator.is_done():
                return

    def logits(self, ids: list[int]) -> np.ndarray:
        """The next-token logits after `ids` (one prefill): what the tests compare across precisions."""
        og = self._og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(ids) + 1, do_sample=False)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        return np.asarray(generator.get_logits()[0, -1], dtype=np.float32)


register(Format("causal-ort", "onnxruntime-genai folder (genai_config.json, model.onnx + data; fp32/int8/int4) + tokenizer/",
                GenAIGenerator, None, ("onnxruntime-genai", "tokenizers", "jinja2"), standard="onnxruntime-genai"))  # fmt: skip
