#!/usr/bin/env python3
"""The two commands for a fresh clone; needs only Python 3.11 or 3.12.

    python3 dev.py run     # the whole pipeline on the embedded default (extra arguments go to `frugal run`)
    python3 dev.py test    # lint, the layer contract and the test suite, exactly what CI runs (extra arguments go to pytest)

Each first makes `.venv` from requirements/lock.txt, and makes it again when the lock changes.
torch is installed first and pinned, so no resolver pulls CUDA wheels; set FRUGAL_TORCH_INDEX
(e.g. https://download.pytorch.org/whl/cpu) to take torch from another index.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "lock.txt"
STAMP = VENV / ".frugal-lock-sha256"  # the lock the environment was made from


def bin_path(name: str) -> str:
    return str(VENV / ("Scripts" if os.name == "nt" else "bin") / name)


def sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, cwd=ROOT, check=True)


def ensure_env() -> None:
    lock_hash = hashlib.sha256(LOCK.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.is_file() and STAMP.read_text().strip() == lock_hash:
        return
    if not (3, 11) <= sys.version_info[:2] <= (3, 12):
        sys.exit(f"frugal needs Python 3.11 or 3.12; this is {sys.version.split()[0]}. Run dev.py with python3.11 or python3.12.")
    if not Path(bin_path("python")).exists():
        try:
            sh(sys.executable, "-m", "venv", str(VENV))
        except subprocess.CalledProcessError:
            sys.exit("Could not create .venv: this Python lacks venv/ensurepip (Debian/Ubuntu: apt install python3-venv).")
    torch = re.search(r"^torch==\S+", LOCK.read_text(), re.M)
    index = ["--index-url", os.environ["FRUGAL_TORCH_INDEX"]] if os.environ.get("FRUGAL_TORCH_INDEX") else []
    sh(bin_path("python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
    sh(bin_path("python"), "-m", "pip", "install", "--quiet", torch.group(0) if torch else "torch", *index)
    sh(bin_path("python"), "-m", "pip", "install", "--quiet", "-c", str(LOCK), "-e", ".[dev]")
    sh(bin_path("python"), "-m", "pip", "check")
    STAMP.write_text(lock_hash + "\n")


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test", "env"):
        print(__doc__)
        return 2
    ensure_env()
    env_bin = str(Path(bin_path("python")).parent)
    os.environ["PATH"] = env_bin + os.pathsep + os.environ.get("PATH", "")  # the stages' own commands (frugal, dvc, mlflow)
    try:
        if argv[0] == "run":
            sh(bin_path("frugal"), "run", *argv[1:])
        elif argv[0] == "test":
            sh(bin_path("ruff"), "check", ".")
            sh(bin_path("lint-imports"), "--no-cache")  # the layers, the leaf runtime and zero import cycles (.importlinter)
            sh(bin_path("python"), "-m", "pytest", *argv[1:])
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
