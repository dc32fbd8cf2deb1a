"""Which int8/int4 runtime is faster on this machine for the fine-tuned causal LM: ONNX Runtime GenAI (MatMulNBits, the
`genai` method) or OpenVINO + NNCF weight compression (optimum-intel, in the peer environment), beside transformers fp32.

    python benchmarks/generate_runtimes.py PROJECT_DIR PARENT_RUN [--prompts 16] [--passes 3]

PROJECT_DIR / PARENT_RUN: a `benchmarks/generate.py` run (its baseline and ort-* variants are read from MLflow). Every
runtime gets the same prompt ids (the test split's first `generate.measure_prompts` prompts in frugal's sample order,
rendered through the chat template), the same new-token budget and threads, one request at a time after one warm-up;
passes alternate between runtimes so they share the machine's drift. Decode tokens/s = output tokens / (seconds after
the first token), the pipeline's definition (frugal/measure_generation.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_PYTHON = ROOT / ".frugal" / "envs" / "peer" / "bin" / "python"


def rates(requests: list[dict]) -> tuple[float, float]:
    """Decode tokens/s and median time to first token (ms) of one pass."""
    decode = sum(max(r["seconds"] - r["first_token_s"], 0.0) for r in requests)
    output = sum(len(r["ids"]) for r in requests)
    return output / decode, 1000 * statistics.median(r["first_token_s"] for r in requests)


def frugal_pass(generator, prompts: list[list[int]], max_new: int) -> list[dict]:  # noqa: ANN001
    out = []
    for ids in prompts:
        start, first, got = time.perf_counter(), None, []
        for token_id, _ in generator.stream_ids(ids, max_new):
            first = first or time.perf_counter()
            got.append(token_id)
            if token_id in generator.eos_ids:
                break
        end = time.perf_counter()
        out.append({"ids": got, "first_token_s": (first or end) - start, "seconds": end - start})
    return out


def peer_pass(model_dir: Path, prompts: list[list[int]], bits: int, max_new: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "prompts.json").write_text(json.dumps(prompts))
        command = [str(PEER_PYTHON), str(ROOT / "benchmarks" / "generate_peer.py"), str(model_dir), f"{tmp}/prompts.json",
                   f"{tmp}/out.json", str(bits), str(max_new), str(threads)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
        return json.loads((Path(tmp) / "out.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project_dir")
    parser.add_argument("parent_run")
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    import pandas as pd

    from benchmarks.compression import machine
    from benchmarks.generate import variant_metrics  # noqa: F401 - the same MLflow store
    from frugal.config import load_config, load_hardware
    from frugal.measure_generation import sample_order
    from frugal.paths import ProjectPaths
    from frugal.runtime.registry import load_generator
    from tasks.plumbing import store
    from tasks.plumbing.tracking import mlflow_client
    from tasks.version import version_folder

    paths = ProjectPaths.resolve(args.project_dir)
    mlc = mlflow_client()
    parent = mlc.get_run(args.parent_run)
    cfg = load_config("generate")
    runs = mlc.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{args.parent_run}' and tags.kind = 'variant'")
    folders = {r.data.tags["variant"]: store.resolve(r.data.tags["model_uri"], paths) for r in runs if "model_uri" in r.data.tags}
    test = pd.read_parquet(version_folder(parent.data.tags["data_hash"], paths) / "test.parquet")
    rows = sample_order(len(test))[: cfg.generate.measure_prompts]
    threads, max_new = cfg.evaluate.threads, cfg.generate.max_new_tokens
    baseline = load_generator(folders["baseline"], threads=threads)
    prompts = [baseline.encode(test["prompt"].iloc[i], max_new) for i in rows]
    names = [n for n in ("baseline", "ort-fp32", "ort-int8", "ort-int4") if n in folders]
    generators = {n: load_generator(folders[n], threads=threads) for n in names}
    for gen in generators.values():
        frugal_pass(gen, prompts[:1], max_new)  # warm-up
    passes: dict[str, list[list[dict]]] = {n: [] for n in [*names, "openvino-int8", "openvino-int4"]}
    peers: dict[str, dict] = {}
    for _ in range(args.passes):
        for n in names:
            passes[n].append(frugal_pass(generators[n], prompts, max_new))
        for bits in (8, 4):
            peers[f"openvino-int{bits}"] = peer_pass(folders["baseline"], prompts, bits, max_new, threads)
            passes[f"openvino-int{bits}"].append(peers[f"openvino-int{bits}"]["requests"])
    per_hour = load_hardware()[cfg.evaluate.instance].usd_per_hour
    reference = [r["ids"] for r in passes["baseline"][0]]
    lines = [f"Runtimes on {machine()}: {len(prompts)} test prompts, <= {max_new} new tokens, greedy, {threads} threads, "
             f"{args.passes} alternating passes (median).", "",
             "| runtime | decode tokens/s | x fp32 transformers | ttft p50 ms | $/1M output tokens | answers = fp32's |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    base_rate = statistics.median(rates(p)[0] for p in passes["baseline"])
    for name, got in passes.items():
        rate = statistics.median(rates(p)[0] for p in got)
        ttft = statistics.median(rates(p)[1] for p in got)
        same = sum(a["ids"] == b for a, b in zip(got[0], reference, strict=True))
        usd = per_hour / 3600 / rate * 1e6
        lines.append(f"| {name} | {rate:.1f} | {rate / base_rate:.2f} | {ttft:.0f} | {usd:.4f} | {same}/{len(reference)} |")
    lines += ["", "Peer versions: " + json.dumps(next(iter(peers.values()))["versions"])]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
