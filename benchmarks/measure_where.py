"""Where, and beside what, a variant is measured: one model folder timed by `frugal.measure` (the measurement every
pipeline run uses) on this machine and in the team stack's worker image, alone and with a second measurement at the
same moment, and two requested at once through one slot, as the `frugal-measure` limit runs them (docs/measurement.md).

    python benchmarks/measure_where.py MODEL_DIR TEST_PARQUET [--image frugal/worker-cpu:local] [--out FILE.md]

Issue 22 found a quantized variant measured at 135 texts/s on the stack's CPU worker against 391 on the host; this
prints the table that says why. Run it alone on the machine: every figure is a share of the same cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REQUEST = {"batch_size": 32, "threads": 2, "warmup_batches": 2, "latency_samples": 20, "device": "cpu", "passes": 3,
           "arrival_order": False}  # fmt: skip


def _command(where: str, out: Path, model: Path, test: Path, image: str) -> tuple[list[str], dict]:
    request = dict(REQUEST)
    if where == "host":
        return [sys.executable, "-m", "frugal.measure", str(out)], {**request, "model_dir": str(model), "test_parquet": str(test)}
    mounts = ["-v", f"{model}:/m:ro", "-v", f"{test}:/t/test.parquet:ro", "-v", f"{out.parent}:/out"]
    argv = ["docker", "run", "--rm", "-i", *mounts, image, "python", "-m", "frugal.measure", f"/out/{out.name}"]
    return argv, {**request, "model_dir": "/m", "test_parquet": "/t/test.parquet"}


def measure(where: str, together: int, model: Path, test: Path, image: str, work: Path) -> list[float]:
    """Texts/s of `together` measurements started at the same moment (each its own process or container)."""
    procs, outs = [], []
    for i in range(together):
        out = work / f"{where}-{together}-{i}.json"
        argv, request = _command(where, out, model, test, image)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc.stdin.write(json.dumps(request))
        proc.stdin.close()
        procs.append(proc)
        outs.append(out)
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"measurement on {where} failed: {proc.stderr.read()[-2000:]}")
    return [json.loads(out.read_text())["metrics"]["throughput_per_s"] for out in outs]


def _each(values: list[float]) -> str:
    return " / ".join(f"{v:,.0f}" for v in values)


def fingerprint(where: str, image: str) -> str:
    code = "import json; from frugal.hardware import machine_fingerprint as f; print(json.dumps(f(threads=2)))"
    argv = [sys.executable, "-c", code] if where == "host" else ["docker", "run", "--rm", image, "python", "-c", code]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return done.stdout.strip() or done.stderr.strip()[-300:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("test", type=Path)
    parser.add_argument("--image", default="frugal/worker-cpu:local")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model, test = args.model.resolve(), args.test.resolve()
    rows = ["| where | how | texts/s (each) |", "|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        work.chmod(0o777)  # the worker image writes its result as user frugal
        for where in ("host", "worker image"):
            key = "host" if where == "host" else "docker"
            alone = measure(key, 1, model, test, args.image, work)
            beside = measure(key, 2, model, test, args.image, work)
            slot = [measure(key, 1, model, test, args.image, work)[0] for _ in range(2)]  # one slot: one after the other
            rows += [f"| {where} | alone | {alone[0]:,.0f} |", f"| {where} | beside another, no limit | {_each(beside)} |",
                     f"| {where} | two requested at once, one slot | {_each(slot)} |"]  # fmt: skip
    report = "\n".join(rows) + "\n\nfingerprints:\n" + "\n".join(f"- {w}: {fingerprint(w, args.image)}" for w in ("host", "docker"))
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
