"""The best one-command peer recipe, applied to the user's own fine-tuned model: optimum-intel's OpenVINO export, then
NNCF static int8 (transformer preset) calibrated on train texts. Runs in its own environment (benchmarks/peer-env.sh:
optimum-intel pins transformers < 5.6, frugal's lock has a newer one); benchmarks/compression.py calls it and measures
the result with frugal's own harness, beside frugal's rows.

    .frugal/envs/peer/bin/python benchmarks/peer.py MODEL_DIR CALIBRATION_JSON OUT_DIR

MODEL_DIR: a frugal `hf` model folder (config.json + weights; its tokenizer in tokenizer/). CALIBRATION_JSON: a list of
texts. OUT_DIR gets model.xml + model.bin and peer.json (versions, seconds).
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

TOKENIZER_DIR = "tokenizer"  # frugal/runtime/manifest.py's; this script cannot import frugal (another environment)


def main(model_dir: str, calibration: str, out: str) -> int:
    import nncf
    import openvino as ov
    from optimum.intel import OVModelForSequenceClassification
    from transformers import AutoTokenizer

    started = time.perf_counter()
    texts = json.loads(Path(calibration).read_text())
    max_length = json.loads((Path(model_dir) / "frugal.json").read_text())["max_length"]  # as frugal serves it
    tokenizer = AutoTokenizer.from_pretrained(Path(model_dir) / TOKENIZER_DIR)
    model = OVModelForSequenceClassification.from_pretrained(model_dir, export=True, compile=False)
    names = {i.get_any_name() for i in model.model.inputs}

    def sample(text: str) -> dict:
        encoded = tokenizer(text, truncation=True, max_length=max_length, return_tensors="np")
        return {k: v for k, v in encoded.items() if k in names}

    quantized = nncf.quantize(model.model, nncf.Dataset(texts, sample), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(texts))
    Path(out).mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(Path(out) / "model.xml"), compress_to_fp16=False)
    packages = ("optimum-intel", "optimum", "transformers", "openvino", "nncf", "torch")
    record = {"recipe": "optimum-intel export + NNCF static int8 (ModelType.TRANSFORMER)", "calibration_texts": len(texts),
              "seconds": time.perf_counter() - started, "versions": {p: version(p) for p in packages}}  # fmt: skip
    (Path(out) / "peer.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
