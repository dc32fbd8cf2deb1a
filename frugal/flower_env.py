"""The Flower environment: a virtualenv of its own, made from requirements/flower-lock.txt by `frugal federated-env`.

Flower cannot be installed beside the pipeline (it pins an older fastapi/starlette and protobuf < 7, prefect
needs newer), so federated fine-tuning runs its SuperLink, SuperNodes and Flower App in this environment and
the pipeline starts them as subprocesses. Like dev.py's `.venv`: torch is installed first and pinned (no
resolver picks a CUDA build), then the full lock; a stamp of the lock's hash, written last, marks it complete,
so a half-made environment is never used and is made again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from frugal.errors import ConfigError
from frugal.paths import ROOT

LOCK = ROOT / "requirements" / "flower-lock.txt"
ENV_VAR = "FRUGAL_FLOWER_ENV"  # where the environment lives; default: .frugal/envs/flower in the repo (git-ignored)
STAMP = ".frugal-lock-sha256"


def env_dir() -> Path:
    return Path(os.environ.get(ENV_VAR) or ROOT / ".frugal" / "envs" / "flower").resolve()


def bin_path(env: Path, name: str) -> Path:
    return env / ("Scripts" if os.name == "nt" else "bin") / name


def lock_hash() -> str:
    return hashlib.sha256(LOCK.read_bytes()).hexdigest()


def is_ready(env: Path) -> bool:
    stamp = env / STAMP
    return stamp.is_file() and stamp.read_text().strip() == lock_hash()


def ensure(env: Path, quiet: bool = True) -> bool:
    """Make the environment at `env` unless it is complete and from this lock; True when it was (re)made."""
    if is_ready(env):
        return False
    with _build_lock(env):  # a second `frugal federated-env` (or test session) waits, then finds it made
        if is_ready(env):
            return False
        _make(env, quiet)
        return True


@contextlib.contextmanager
def _build_lock(env: Path):
    env.parent.mkdir(parents=True, exist_ok=True)
    with open(env.parent / f"{env.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def _make(env: Path, quiet: bool) -> None:
    shutil.rmtree(env, ignore_errors=True)  # a half-made or outdated environment: start clean
    _sh(sys.executable, "-m", "venv", str(env))
    python, q = str(bin_path(env, "python")), ["--quiet"] if quiet else []
    torch = re.search(r"^torch==\S+", LOCK.read_text(), re.M)
    index = ["--index-url", os.environ["FRUGAL_TORCH_INDEX"]] if os.environ.get("FRUGAL_TORCH_INDEX") else []
    _sh(python, "-m", "pip", "install", *q, "--upgrade", "pip")
    _sh(python, "-m", "pip", "install", *q, torch.group(0) if torch else "torch", *index)
    _sh(python, "-m", "pip", "install", *q, "-r", str(LOCK))  # every package pinned: nothing left to the resolver
    _sh(python, "-m", "pip", "check")
    (env / STAMP).write_text(lock_hash() + "\n")


def require(env: Path) -> Path:
    """The environment, or one error naming the command that makes it (a pipeline stage does not install for minutes)."""
    if not is_ready(env):
        state = "is out of date (requirements/flower-lock.txt changed)" if env.exists() else "does not exist"
        raise ConfigError(f"Federated fine-tuning needs the Flower environment, and {env} {state}.",
                          f"Run `frugal federated-env` (it makes the environment there; set {ENV_VAR} to put it elsewhere).")  # fmt: skip
    return env


def _sh(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    try:
        subprocess.run(args, check=True)
    except subprocess.CalledProcessError as exc:
        raise ConfigError(
            f"Making the Flower environment failed: `{' '.join(args)}` exited with {exc.returncode}.",
            "Read pip's output above; check the package index is reachable, then run `frugal federated-env` again.",
        ) from None
