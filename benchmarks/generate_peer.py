"""OpenVINO + NNCF weight compression of a fine-tuned causal LM, timed greedy one request at a time: the other int8/int4
runtime issue 23 names, beside ONNX Runtime GenAI's MatMulNBits. Runs in the peer environment (benchmarks/peer-env.sh:
optimum-intel pins transformers < 5.6, frugal's lock has a newer one); benchmarks/generate_runtimes.py calls it with the
same prompt ids and new-token budget it gives frugal's own runtimes.

    .frugal/envs/peer/bin/python benchmarks/generate_peer.py MODEL_DIR PROMPTS_JSON OUT_JSON BITS MAX_NEW THREADS

MODEL_DIR: a frugal `causal-hf` folder (config.json + weights; its tokenizer in tokenizer/). PROMPTS_JSON: a list of
token-id lists (the prompts as frugal renders them). BITS: 8 or 4 (NNCF `compress_weights` through optimum-intel's
OVWeightQuantizationConfig: int8 per channel; int4 asymmetric in groups of 32 on every layer NNCF compresses, ratio 1.0).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

TOKENIZER_DIR = "tokenizer"  # frugal/runtime/manifest.py's; this script cannot import frugal (another environment)


class FirstToken:
    """A transformers streamer noting when the first new token arrives (generate puts the prompt first)."""

    def __init__(self) -> None:
        self.calls, self.first = 0, None

    def put(self, value) -> None:  # noqa: ANN001 - transformers' streamer protocol
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def export(model_dir: Path, bits: int, out: Path) -> object:
    from optimum.intel import OVModelForCausalLM, OVWeightQuantizationConfig

    with tempfile.TemporaryDirectory() as tmp:  # optimum reads the tokenizer beside the weights
        src = Path(tmp) / "model"
        shutil.copytree(model_dir, src, ignore=shutil.ignore_patterns(TOKENIZER_DIR))
        for item in (model_dir / TOKENIZER_DIR).iterdir():
            shutil.copy(item, src / item.name)
        # int4 in groups of 32, as the genai method's int4_block_size (SmolLM2's width 576 is not a multiple of optimum's 128)
        config = OVWeightQuantizationConfig(bits=4, group_size=32, ratio=1.0) if bits == 4 else OVWeightQuantizationConfig(bits=8)
        model = OVModelForCausalLM.from_pretrained(src, export=True, quantization_config=config, compile=False)
        model.save_pretrained(out)
    return model


def main(model_dir: str, prompts_json: str, out_json: str, bits: str, max_new: str, threads: str) -> int:
    import torch
    from optimum.intel import OVModelForCausalLM

    torch.set_num_threads(int(threads))
    prompts = json.loads(Path(prompts_json).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        export(Path(model_dir), int(bits), Path(tmp) / "ov")
        export_s = time.perf_counter() - started
        model = OVModelForCausalLM.from_pretrained(Path(tmp) / "ov", ov_config={"INFERENCE_NUM_THREADS": int(threads)})
        size_mb = sum(p.stat().st_size for p in (Path(tmp) / "ov").glob("*.bin")) / 1e6
        eos = json.loads((Path(model_dir) / "frugal.json").read_text())["notes"]["eos_token_ids"]
        requests = []
        for i, ids in enumerate([prompts[0], *prompts]):  # the first, untimed, warms up
            streamer = FirstToken()
            start = time.perf_counter()
            out = model.generate(torch.tensor([ids]), max_new_tokens=int(max_new), do_sample=False, eos_token_id=eos, streamer=streamer)
            end = time.perf_counter()
            new = out[0, len(ids) :].tolist()
            if i:
                requests.append({"ids": new, "prompt_tokens": len(ids), "first_token_s": (streamer.first or end) - start,
                                 "seconds": end - start})  # fmt: skip
    record = {"recipe": f"optimum-intel export + NNCF int{bits} weight compression",
              "export_seconds": export_s, "model_size_mb": size_mb, "requests": requests,
              "versions": {p: version(p) for p in ("optimum-intel", "transformers", "openvino", "nncf")}}  # fmt: skip
    Path(out_json).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
