"""Federated fine-tuning: a real Flower SuperLink and SuperNodes on loopback, in the Flower environment this session makes.

The environment is made by `frugal federated-env` from requirements/flower-lock.txt (minutes the first
time; reused while the lock is unchanged). Nothing is simulated: the step starts the processes, the
clients train LoRA adapters on their own rows, only adapters travel, and every process is gone after.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import Built, LocalSplits

from frugal.config import RunConfig, load_config
from frugal.errors import ConfigError, DataError, FrugalError
from frugal.paths import ROOT, ProjectPaths
from ml.flower.frugal_fl import partition
from tasks.plumbing import tracking

FLOWER = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp", "bin/flwr run")
FED = ["finetune.federated.enabled=true", "finetune.federated.clients=2", "finetune.federated.clients_per_round=2"]


def flower_pids() -> set[int]:
    """Every Flower process on the machine (its helpers run detached, so not only this process's descendants)."""
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(name in cmd for name in FLOWER):
            found.add(proc.info["pid"])
    return found


@pytest.fixture(scope="session")
def flower_env() -> Path:
    """The Flower environment, made (or found up to date) by the frugal command, as a user would."""
    from frugal import flower_env as env
    from frugal.cli import main

    assert main(["federated-env"]) == 0
    return env.env_dir()


def fed_config(*overrides: str) -> RunConfig:
    return load_config("smoke", [*FED, *overrides])


def rows(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels})


def test_seeded_shards_are_disjoint_stratified_and_stable() -> None:
    frame = rows({"negative": 10, "neutral": 7, "positive": 5})
    owner = partition.assign(frame, 3, None, seed=1)
    assert set(owner) == {0, 1, 2} and (owner == partition.assign(frame, 3, None, seed=1)).all()
    for client in range(3):
        mine = partition.rows_of(frame, client, 3, None, seed=1)
        assert set(mine["label"]) == {"negative", "neutral", "positive"}  # every client sees every class
    assert max(sum(owner == c) for c in range(3)) - min(sum(owner == c) for c in range(3)) <= 1


def test_partition_by_column_gives_whole_groups() -> None:
    frame = rows({"negative": 4, "neutral": 4, "positive": 4})
    owner = partition.assign(frame, 2, "label", seed=0)
    for _, group in frame.groupby("label"):
        assert len(set(owner[group.index])) == 1  # a value's rows stay on one client
    assert set(owner) == {0, 1}


def test_partition_problems_are_named() -> None:
    frame = rows({"negative": 5, "neutral": 2, "positive": 5})
    assert "'neutral' has 2" in partition.problem(frame, 3, None)
    assert partition.problem(frame, 2, None) is None
    assert "3 distinct values" in partition.problem(frame, 4, "label")
    assert "not a column" in partition.problem(frame, 2, "shop")


def test_config_rules() -> None:
    with pytest.raises(ConfigError, match="clients_per_round=3 is more than clients=2"):
        fed_config("finetune.federated.clients_per_round=3")
    with pytest.raises(ConfigError, match="quantize_4bit"):
        fed_config("finetune.adapter.quantize_4bit=true")
    assert load_config("default").finetune.federated.enabled is False  # off unless asked for


def test_flower_lock_pins_everything() -> None:
    lines = [line for line in (ROOT / "requirements" / "flower-lock.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^\s+]+", line) for line in lines), "every line an exact pin, no local versions"
    pins = dict(line.split("==") for line in lines)
    assert pins["torch"] == "2.13.0" and pins["transformers"] == "5.23.0" and pins["peft"] == "0.21.2"
    assert "flwr" in pins and not {"prefect", "mlflow"} & set(pins)  # the Flower App never imports the pipeline


def test_missing_environment_names_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from frugal import flower_env

    monkeypatch.setenv(flower_env.ENV_VAR, str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="frugal federated-env"):
        flower_env.require(flower_env.env_dir())


def test_a_second_build_waits_for_the_first_and_uses_its_environment(tmp_path: Path) -> None:
    """Two `frugal federated-env` at once (two test sessions, a user and CI) must not delete each other's venv."""
    import fcntl
    import subprocess
    import sys

    from frugal import flower_env

    env = tmp_path / "flower"
    probe = f"from pathlib import Path; from frugal import flower_env; print(flower_env.ensure(Path({str(env)!r})))"
    with open(tmp_path / "flower.lock", "w") as first:  # the first build holds the lock...
        fcntl.flock(first, fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-c", probe], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=3)  # ...so the second waits instead of wiping the half-made folder
        env.mkdir()
        (env / flower_env.STAMP).write_text(flower_env.lock_hash() + "\n")  # the first finishes
    out, _ = second.communicate(timeout=60)
    assert out.strip() == "False"  # found it made: nothing rebuilt
    assert (env / flower_env.STAMP).is_file()


def test_clients_tokenize_exactly_as_the_pipeline_does(baseline: Built, tmp_path: Path) -> None:
    """The Flower App reads the model folder the pipeline wrote; its tokenizer must give the ids serving gives (not [UNK]s)."""
    from frugal.runtime import Tokenize
    from ml.flower.frugal_fl.task import Spec, load_model
    from tasks.federated import write_spec

    shutil.copytree(baseline.model_dir, tmp_path / "base")  # a model folder in frugal's layout (tokenizer/ inside)
    cfg = load_config("smoke", FED)
    spec = Spec.load(str(write_spec(tmp_path, cfg.model, cfg.finetune, cfg.data.labels, 0, tmp_path)))
    _, tokenizer = load_model(spec)
    texts = ["@United Hello World, THANKS for nothing", "late again #fail"]
    ours = tokenizer(texts, truncation=True, max_length=spec.max_length, padding=True)["input_ids"]
    assert ours == Tokenize(tmp_path / "base", spec.max_length)(texts)["input_ids"].tolist()
    assert tokenizer.unk_token_id not in ours[0]


def test_the_server_keeps_the_adapters_of_its_best_round() -> None:
    import torch

    from ml.flower.frugal_fl.task import BestRound

    best, states = BestRound(), {r: {"w": torch.full((2,), float(r))} for r in range(4)}
    for rnd, f1 in [(0, 0.9), (1, 0.3), (2, 0.5), (3, 0.5)]:  # round 0 is the untrained start; 3 only ties 2
        best.offer(rnd, f1, states[rnd])
    states[2]["w"].add_(10)  # the strategy's arrays of a past round may be reused: the kept state is a copy
    assert best.round == 2 and best.f1 == 0.5 and best.state["w"].tolist() == [2.0, 2.0]


def test_more_clients_than_rows_per_class_fails_before_anything(smoke_splits: LocalSplits, store: ProjectPaths) -> None:
    from tasks.finetune import finetune

    cfg = fed_config("finetune.federated.clients=500", "finetune.federated.clients_per_round=1")
    mlc = tracking.client(cfg, store)
    before, flower_before = len(mlc.search_runs([e.experiment_id for e in mlc.search_experiments()])), flower_pids()
    with pytest.raises(DataError, match="fewer training rows than clients") as err:
        finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, "no-run-needed")
    assert "finetune.federated.clients" in err.value.fix
    assert len(mlc.search_runs([e.experiment_id for e in mlc.search_experiments()])) == before  # no run was created
    assert flower_pids() <= flower_before


def expected_payload(cfg: RunConfig) -> tuple[list[str], int]:
    """The keys and bytes of the adapter state a client may send: LoRA matrices and the classifier head only."""
    from peft import get_peft_model, get_peft_model_state_dict

    from ml.adapters import lora_config
    from ml.modeling import load_pretrained_with_notes

    net, _ = load_pretrained_with_notes(cfg.model, cfg.data.labels, cfg.seed)
    state = get_peft_model_state_dict(get_peft_model(net, lora_config(cfg.finetune.adapter)))
    return sorted(state), sum(t.numel() * t.element_size() for t in state.values())


@pytest.mark.slow
def test_federated_baseline_goes_through_the_pipeline(flower_env: Path, prefect_server: None, project: Path, tmp_path: Path) -> None:
    from flows.pipeline import run

    overrides = [*FED, "finetune.federated.rounds=2", "compress.variants={int8-dynamic: {method: dynamic_int8}}"]
    before = flower_pids()
    result = run(config="smoke", overrides=overrides, project_dir=str(project))
    assert flower_pids() <= before, "a Flower process outlived the step"
    cfg = load_config("smoke", overrides)
    mlc = tracking.client(cfg, ProjectPaths(project))
    exp = mlc.get_run(result.run_id).info.experiment_id
    assert mlc.get_run(result.run_id).info.status == "FINISHED"
    (step,) = mlc.search_runs([exp], "tags.step = 'finetune'")
    assert step.data.params["federated"] == "True" and step.data.params["fl_clients"] == "2"
    curve = sorted((m.step, m.value) for m in mlc.get_metric_history(step.info.run_id, "fl_val_macro_f1"))
    assert [rnd for rnd, _ in curve] == [1, 2]
    kept = max(curve, key=lambda point: (point[1], -point[0]))  # the best round, the earliest on a tie
    assert step.data.tags["fl_best_round"] == str(kept[0]) and step.data.metrics["best_val_macro_f1"] == kept[1]
    record = json.loads(Path(mlc.download_artifacts(step.info.run_id, "federated/rounds.json", str(tmp_path))).read_text())
    keys, size = expected_payload(cfg)
    assert all("lora_" in k or ".classifier." in k for k in keys)
    for rnd in record["rounds"]:
        for sent in [rnd["sent"], *rnd["replies"]]:  # both directions: the adapters and head, nothing else
            assert sent["keys"] == keys and sent["tensor_bytes"] == size
            assert size < sent["wire_bytes"] < size + 200 * len(keys)  # plus one small .npy header per tensor
        assert rnd["bytes_on_wire"] == 4 * record["rounds"][0]["sent"]["wire_bytes"]  # 2 clients, there and back
        assert rnd["bytes_full_model"] > 100 * rnd["bytes_on_wire"]
    query = f"tags.mlflow.parentRunId = '{result.run_id}' and tags.kind = 'variant'"
    variants = {r.data.tags["variant"]: r for r in mlc.search_runs([exp], query)}
    assert set(variants) == {"baseline", "int8-dynamic"} and all(r.info.status == "FINISHED" for r in variants.values())
    assert "macro_f1" in variants["int8-dynamic"].data.metrics and result.selection is not None


@pytest.mark.slow
def test_a_client_dying_mid_round_leaves_the_round_to_the_others(
    flower_env: Path, smoke_splits: LocalSplits, store: ProjectPaths, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tasks.finetune import finetune

    monkeypatch.setenv("FRUGAL_FL_FAIL_PARTITION", "0")  # client 0's process exits in round 1 without replying
    cfg = fed_config("finetune.federated.rounds=2", "finetune.federated.round_timeout_seconds=300")
    mlc = tracking.client(cfg, store)
    before = flower_pids()
    with tracking.parent_run(cfg, store, run_name="fl-dropout") as parent:
        ref = finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, parent)
    assert flower_pids() <= before
    step = mlc.get_run(ref.run_id)
    assert step.info.status == "FINISHED" and "round 1" in step.data.tags["fl_dropped"]
    replied = {m.step: m.value for m in mlc.get_metric_history(ref.run_id, "fl_replied")}
    assert replied == {1: 1.0, 2: 2.0}  # round 1 completed with the other client; round 2 had both again
    assert (Path(mlc.download_artifacts(ref.run_id, "model", str(tmp_path))) / "frugal.json").is_file()


@pytest.mark.slow
def test_every_client_dying_fails_the_run_cleanly(
    flower_env: Path, smoke_splits: LocalSplits, store: ProjectPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.finetune import finetune

    monkeypatch.setenv("FRUGAL_FL_FAIL_PARTITION", "0,1")
    cfg = fed_config("finetune.federated.rounds=1", "finetune.federated.round_timeout_seconds=300")
    mlc = tracking.client(cfg, store)
    before = flower_pids()
    with pytest.raises(FrugalError, match="round 1: no client returned its adapters"):
        with tracking.parent_run(cfg, store, run_name="fl-all-drop") as parent:
            finetune.fn(smoke_splits.ref, cfg.model, cfg.finetune, cfg.data.labels, cfg.seed, store, parent)
    assert flower_pids() <= before
    (step,) = mlc.search_runs([mlc.get_run(parent).info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert step.info.status == "FAILED"
    assert not mlc.search_runs([e.experiment_id for e in mlc.search_experiments()], "attributes.status = 'RUNNING'")
