"""Federated fine-tuning: a real Flower SuperLink, N SuperNodes and `flwr run` on loopback, then the merged baseline.

The finetune stage calls `finetune_federated` when `finetune.federated.enabled`. Flower runs in its own
environment (frugal/flower_env.py), so this module only starts its processes: the SuperLink, one SuperNode
per client (node config `partition-id`/`num-partitions`), and `flwr run` of the Flower App in
frugal/flower/, which blocks until the run ends. The step owns every process: each starts in its own
process group and every group is terminated in a `finally`, on success, error or Ctrl-C alike. The App
writes the averaged adapters and the per-round record to a folder of this step; back in this environment
they are merged into the base model, which is saved and logged exactly like a centralised baseline.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pandas as pd

from frugal import flower_env
from frugal.config import FinetuneConfig, ModelConfig
from frugal.errors import DataError, FrugalError
from frugal.paths import ProjectPaths
from frugal.pricing import train_usd
from frugal.runtime.formats.torch import count_params, save_hf
from frugal.runtime.manifest import TOKENIZER_DIR, Manifest
from ml.adapters import lora_config
from ml.data import labelled_rows, read_split
from ml.flower.frugal_fl import partition
from ml.modeling import load_pretrained_with_notes, load_tokenizer, save_tokenizer
from ml.training import ensure_pad_token_id
from tasks.plumbing import store, tracking
from tasks.plumbing.refs import DataRef, ModelRef

log = logging.getLogger(__name__)
APP_DIR = Path(__file__).resolve().parents[1] / "ml" / "flower"
CODE_DEPS = ("ml.flower.frugal_fl",)  # the Flower App this step runs (in its own environment, so never imported here)


class FederatedRunFailed(FrugalError):
    """The Flower run ended without merged adapters."""


def check_partition(train: pd.DataFrame, cfg: FinetuneConfig) -> None:
    """One DataError before any process starts when the rows cannot be split across the configured clients."""
    fed = cfg.federated
    if (why := partition.problem(train, fed.clients, fed.partition_by)) is not None:
        raise DataError(f"{why}.", "Lower finetune.federated.clients, or partition by another column (finetune.federated.partition_by).")


def finetune_federated(data: DataRef, model: ModelConfig, cfg: FinetuneConfig, labels: list[str], seed: int,
                       paths: ProjectPaths, parent_run: str) -> ModelRef:  # fmt: skip
    """Fine-tune by federated LoRA and log the merged baseline on a `finetune` step run, like the centralised path."""
    splits = store.data_dir(data, paths)
    train = labelled_rows(read_split(splits, "train"), cfg.max_rows, seed)
    check_partition(train, cfg)  # user errors first, before any process starts or run is created
    env = flower_env.require(flower_env.env_dir())
    with tracking.nested_run(parent_run, "finetune", {"kind": "step", "step": "finetune"}) as run_id, tempfile.TemporaryDirectory() as tmp:
        work, out = Path(tmp), Path(tmp) / "model"
        tokenizer = load_tokenizer(model)
        net, notes = load_pretrained_with_notes(model, labels, seed)
        if notes:
            tracking.set_tags(run_id, {"notes": " ".join(notes)})
        ensure_pad_token_id(net.config, tokenizer)
        base = work / "base"  # the weights every client and the server start from: base model plus this seed's head
        net.save_pretrained(base)
        save_tokenizer(tokenizer, base)
        train.to_parquet(work / "train.parquet", index=False)  # one file for all clients here; each keeps only its rows
        spec = write_spec(work, model, cfg, labels, seed, splits)
        started = time.perf_counter()
        timeout = cfg.federated.round_timeout_seconds * (cfg.federated.rounds + 1)
        record = run_flower(env, work, spec, cfg.federated.clients, timeout, keep_logs=paths.work / 'logs' / f'federated-{run_id}')
        seconds = time.perf_counter() - started
        net = merged(net, cfg, work / "result" / "adapter.safetensors")
        save_tokenizer(tokenizer, out)
        total = count_params(net)
        save_hf(net, out, Manifest(format="hf", labels=labels, max_length=model.max_length, params=total))
        log_record(run_id, record, cfg, seconds, total)
        tracking.log_dir(run_id, out, "model")
    log.info("Federated fine-tune in %.0f s, %d rounds: kept round %d", seconds, len(record["rounds"]), record["best_round"])
    return ModelRef(run_id=run_id, seconds=seconds)


def write_spec(work: Path, model: ModelConfig, cfg: FinetuneConfig, labels: list[str], seed: int, splits: Path) -> Path:
    """The Flower App's settings (frugal/flower/frugal_fl/task.py `Spec`), one JSON file it reads by path."""
    fed, adapter = cfg.federated, cfg.adapter
    (work / "result").mkdir()
    spec = {
        "model_dir": str(work / "base"), "tokenizer_dir": str(work / "base" / TOKENIZER_DIR), "train_file": str(work / "train.parquet"),
        "val_file": str(splits / "val.parquet"),
        "out_dir": str(work / "result"), "labels": labels, "max_length": model.max_length, "clients": fed.clients,
        "clients_per_round": fed.clients_per_round, "partition_by": fed.partition_by, "rounds": fed.rounds,
        "local_epochs": fed.local_epochs, "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
        "weight_decay": cfg.weight_decay, "threads": cfg.threads, "seed": seed, "round_timeout_seconds": fed.round_timeout_seconds,
        "lora": {"r": adapter.r, "alpha": adapter.alpha, "dropout": adapter.dropout, "target_modules": adapter.target_modules},
    }  # fmt: skip
    path = work / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def run_flower(env: Path, work: Path, spec: Path, clients: int, timeout: float, keep_logs: Path) -> dict:
    """Start the SuperLink and SuperNodes, `flwr run` the App to its end; the App's rounds.json, or one clear error."""
    result = work / "result"
    with flower_processes(env, work, clients) as port:
        home = work / "flwr-home"
        # The Flower config file names the SuperLink `flwr run` submits to (Control API, plain HTTP on loopback).
        connection = f'[superlink]\ndefault = "frugal"\n[superlink.frugal]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
        (home / "config.toml").write_text(connection)
        cmd = [str(flower_env.bin_path(env, "flwr")), "run", str(APP_DIR), "frugal", "--stream", "--run-config", f'spec="{spec}"']
        with open(work / "flwr-run.log", "w") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_flower_env_vars(env, work))
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            finally:
                _stop(proc)
    if (result / "rounds.json").is_file() and (result / "adapter.safetensors").is_file():
        return json.loads((result / "rounds.json").read_text())
    keep_logs.mkdir(parents=True, exist_ok=True)  # the step's folder goes with it: its logs are what explains the failure
    for log_file in work.glob("*.log"):
        shutil.copy(log_file, keep_logs / log_file.name)
    raise FederatedRunFailed(_failure(work), f"Read the Flower logs in {keep_logs}; fix the cause and run again (no baseline was saved).")


def _failure(work: Path) -> str:
    error = work / "result" / "error.json"
    if error.is_file():
        return f"The federated run failed: {json.loads(error.read_text())['error']}."
    tail = (work / "flwr-run.log").read_text()[-600:] if (work / "flwr-run.log").is_file() else ""
    return f"The federated run ended without a result (flwr run output ends: {tail.strip()!r})."


@contextmanager
def flower_processes(env: Path, work: Path, clients: int) -> Iterator[int]:
    """A SuperLink and `clients` SuperNodes on loopback, free ports; every one stopped on the way out, whatever happened."""
    (work / "flwr-home").mkdir(exist_ok=True)
    link_port = free_port()
    with ExitStack() as stack:
        link = [str(flower_env.bin_path(env, "flower-superlink")), "--insecure", "--host", "127.0.0.1", "--port", str(link_port)]
        stack.enter_context(_process(link, env, work, "superlink"))
        _wait_for_port(link_port)
        for i in range(clients):
            node = [str(flower_env.bin_path(env, "flower-supernode")), "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                    "--host", "127.0.0.1", "--port", str(free_port()),  # the SuperNode's own API, for its ClientApp processes
                    "--node-config", f"partition-id={i} num-partitions={clients}"]  # fmt: skip
            stack.enter_context(_process(node, env, work, f"supernode-{i}"))
        yield link_port


@contextmanager
def _process(cmd: list[str], env: Path, work: Path, name: str) -> Iterator[subprocess.Popen]:
    with open(work / f"{name}.log", "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_flower_env_vars(env, work), start_new_session=True)
        try:
            yield proc
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the process and every descendant, then kill what lingers.

    Flower starts its own helpers (SuperExec, the ServerApp and ClientApp processes) detached, in sessions
    of their own, so the process group is not enough: the tree is read from the OS before anything stops.
    """
    import psutil

    try:
        root = psutil.Process(proc.pid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(family, timeout=10)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)
    proc.wait()  # reaped: no zombie left either


def _flower_env_vars(env: Path, work: Path) -> dict[str, str]:
    # FLWR_HOME: Flower's config file, installed FABs and state stay in this step's temporary folder.
    # PATH: Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
    path = f"{flower_env.bin_path(env, 'python').parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "FLWR_HOME": str(work / "flwr-home"), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FederatedRunFailed(f"The Flower SuperLink did not listen on 127.0.0.1:{port} within {timeout:.0f} s.", "See its log.")


def merged(net, cfg: FinetuneConfig, adapters: Path):  # -> torch.nn.Module
    """The base model with the federated adapters (and head) merged in: a plain transformers model, as after central LoRA."""
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    peft_net = get_peft_model(net, lora_config(cfg.adapter))
    set_peft_model_state_dict(peft_net, load_file(str(adapters)))
    return peft_net.merge_and_unload().eval()


def log_record(run_id: str, record: dict, cfg: FinetuneConfig, seconds: float, total: int) -> None:
    """Params, the per-round curve (step = round) and the totals on the finetune step run."""

    fed, rounds = cfg.federated, record["rounds"]
    tracking.log_params(run_id, {"adapter": "lora", "federated": True, "fl_clients": fed.clients, "fl_rounds": fed.rounds,
                                 "fl_clients_per_round": fed.clients_per_round, "fl_local_epochs": fed.local_epochs,
                                 "fl_partition_by": fed.partition_by or "stratified-shards",
                                 "fl_payload_keys": len(record["adapter_keys"]), "trainable_params": _adapter_params(rounds)})  # fmt: skip
    keys = ("val_macro_f1", "bytes_sent", "bytes_received", "bytes_on_wire", "bytes_full_model", "clients", "replied")
    tracking.log_history(run_id, [{"step": r["round"], **{f"fl_{k}": r[k] for k in keys}} for r in rounds])
    if dropped := [f"round {r['round']}: {reason}" for r in rounds for reason in r["failed"]]:  # those rounds completed without them
        tracking.set_tags(run_id, {"fl_dropped": "; ".join(dropped)[:5000]})
    wire, full = sum(r["bytes_on_wire"] for r in rounds), sum(r["bytes_full_model"] for r in rounds)
    # The server kept the adapters of its best round by val macro-F1, as central training keeps its best val check.
    best = next(r for r in rounds if r["round"] == record["best_round"])
    tracking.set_tags(run_id, {"fl_best_round": str(best["round"])})
    tracking.log_metrics(run_id, {"best_val_macro_f1": best["val_macro_f1"], "trainable_share": _adapter_params(rounds) / total,
                                  "fl_bytes_on_wire": wire, "fl_bytes_full_model": full, "fl_wire_share": wire / full,
                                  "train_seconds": seconds, "train_usd": train_usd(seconds, cfg.instance)})  # fmt: skip
    tracking.log_text(run_id, json.dumps(record, indent=1), "federated/rounds.json")


def _adapter_params(rounds: list[dict]) -> int:
    return rounds[0]["sent"]["tensor_bytes"] // 4  # fp32 adapter tensors
