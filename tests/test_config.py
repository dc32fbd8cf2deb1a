from __future__ import annotations

import os
from pathlib import Path

import pytest

from frugal.config import CONFIGS_DIR, load_config, load_hardware
from frugal.errors import ConfigError
from ml.compress.plan import plan


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(name)
    assert cfg.name == name
    assert "int8" in cfg.compress.variants
    assert cfg.flat()["data.labels"] == '["negative", "neutral", "positive"]'


def test_every_experiment_config_loads() -> None:
    for path in sorted((CONFIGS_DIR / "experiments").glob("*.yaml")):
        assert load_config(path).name


def test_smoke_extends_default_and_overrides_only_what_it_names() -> None:
    default, smoke = load_config("default"), load_config("smoke")
    assert smoke.model.source == "tiny" and default.model.source == "embedded"
    assert smoke.data.labels == default.data.labels
    assert smoke.evaluate.threads == default.evaluate.threads


def test_override_sets_a_nested_value() -> None:
    cfg = load_config("smoke", ["finetune.epochs=3", "data.labels=[a, b]"])
    assert cfg.finetune.epochs == 3
    assert cfg.data.labels == ["a", "b"]


def test_unknown_key_is_one_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune\.epoch'"):
        load_config("smoke", ["finetune.epoch=3"])


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"'finetune\.learning_rate'"):
        load_config("smoke", ["finetune.learning_rate=-1"])


def test_unknown_compression_method_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown compression method 'zip'.*dynamic_int8"):
        plan(load_config("smoke", ["compress.variants={v: {method: zip}}"]).compress)


def test_bad_method_option_names_variant_and_option() -> None:
    with pytest.raises(ConfigError, match=r"variant 'v', method 'dynamic_int8': bits"):
        plan(load_config("smoke", ["compress.variants={v: {method: dynamic_int8, bits: 4}}"]).compress)


def test_a_step_that_cannot_take_the_format_before_it_is_one_config_error() -> None:
    """Formats are checked along the chain before anything runs: prune takes a PyTorch model, onnx_export gives ONNX."""
    with pytest.raises(ConfigError, match=r"variant 'v': prune takes hf or hf-resized, but step 1 \(onnx_export\) gives onnx"):
        plan(load_config("smoke", ["compress.variants={v: [{method: onnx_export}, {method: prune}]}"]).compress)
    planned = plan(load_config("smoke", ["compress.variants={v: [{method: prune}, {method: onnx_int8}]}"]).compress)
    assert [step.method.name for step in planned.chains["v"]] == ["prune", "onnx_int8"]


def test_the_config_schema_does_not_read_the_method_registry() -> None:
    """Validating a YAML file imports no compression method: the schema checks the shape, the plan the methods."""
    import subprocess
    import sys

    probe = ("import sys; from frugal.config import load_config; load_config('smoke'); "
             "print(sorted(m for m in sys.modules if m.startswith(('ml', 'tasks'))))")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_unknown_instance_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\.instance='nope'"):
        load_config("smoke", ["evaluate.instance=nope"])


def test_missing_config_file_names_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_extends_cycle_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("extends: b\n")
    (tmp_path / "b.yaml").write_text("extends: a\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_hardware_prices_name_their_source_and_date() -> None:
    for instance in load_hardware().values():
        assert instance.usd_per_hour > 0 and instance.source and instance.as_of


def test_config_digest_changes_with_content() -> None:
    assert load_config("smoke").digest() != load_config("smoke", ["seed=1"]).digest()


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from frugal.paths import ProjectPaths
    from tasks.plumbing.tracking import tracking_uri

    paths = ProjectPaths(tmp_path)
    assert tracking_uri(load_config("smoke"), paths) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking_uri(load_config("smoke", ["tracking.tracking_uri=http://mlflow:5000"]), paths) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    assert tracking_uri(load_config("smoke", ["tracking.tracking_uri=http://mlflow:5000"]), paths) == "http://team-server:5000"


def test_the_users_tracking_uri_stays_theirs_after_frugal_connects_to_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A run connects to the server MLFLOW_TRACKING_URI names; afterwards that is still the user's choice (the end-of-run
    hint named the project's SQLite file on the team stack), and downloads from it go through the server."""
    from flows.commands import where_to_look
    from frugal.paths import ProjectPaths
    from tasks.plumbing.tracking import connect, tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team-server:5000")
    monkeypatch.delenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", raising=False)
    for module in ("mlflow.tracking._tracking_service.utils._tracking_uri", "mlflow.tracking._model_registry.utils._registry_uri"):
        monkeypatch.setattr(module, None)  # connect() sets MLflow's process-wide URIs: back to unset after the test
    connect("http://team-server:5000")
    assert tracking_uri(load_config("smoke"), ProjectPaths(tmp_path)) == "http://team-server:5000"
    assert os.environ["MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD"] == "false"
    assert where_to_look("http://team-server:5000") == "http://team-server:5000"
    monkeypatch.setenv("FRUGAL_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    assert where_to_look("http://team-server:5000") == "http://127.0.0.1:5000"
    assert where_to_look("sqlite:///x/mlflow.db").startswith("mlflow ui --backend-store-uri sqlite:///x/mlflow.db")


@pytest.mark.parametrize("key", ["data.dir", "result_storage"])
@pytest.mark.parametrize("value", ["../outside", "/tmp/elsewhere", "data/../../outside"])
def test_a_path_frugal_writes_must_stay_in_the_project(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"bad value for '{key}'.*must be a path relative to the project folder"):
        load_config("smoke", [f"{key}={value}"])


def test_a_symlink_out_of_the_project_is_a_config_error(tmp_path: Path) -> None:
    from frugal.paths import ProjectPaths

    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "data").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConfigError, match="data.dir='data' leads outside the project folder"):
        ProjectPaths(tmp_path / "project").data("data")
    assert ProjectPaths(tmp_path / "project").data("sub/data") == tmp_path / "project" / "sub" / "data"


def test_data_version_must_be_a_dvc_folder_hash() -> None:
    with pytest.raises(ConfigError, match="'data.version'.*not a DVC folder hash"):
        load_config("smoke", ["data.version=abc"])
    assert load_config("smoke", ["data.version=" + "a" * 32 + ".dir"]).data.version == "a" * 32 + ".dir"


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("revision", ["main", "v1.0", "abc1234", "0123456789ABCDEF0123456789ABCDEF01234567", COMMIT + "8"])
def test_remote_code_must_be_pinned_to_a_full_commit_hash(revision: str) -> None:
    """A branch, tag or short hash can come to name other code than the one reviewed."""
    with pytest.raises(ConfigError, match=rf"'model\.trust_remote_code'.*org/model is pinned to '{revision}'.*full 40-character"):
        load_config("smoke", [f"model.trust_remote_code={{org/model: {revision}}}"])


def test_a_full_commit_pin_is_accepted_and_lets_that_commit_run_its_code() -> None:
    from frugal.errors import ModelError
    from ml.modeling import _source, check_source

    hub = ["model.source=hub", "model.name_or_path=org/model", f"model.trust_remote_code={{org/model: {COMMIT}}}"]
    cfg = load_config("smoke", [*hub, f"model.revision={COMMIT}"])
    assert cfg.model.trust_remote_code == {"org/model": COMMIT}
    assert _source(cfg.model) == ("org/model", {"revision": COMMIT, "trust_remote_code": True})
    with pytest.raises(ModelError, match=f"only at revision {COMMIT}"):
        check_source(load_config("smoke", [*hub, "model.revision=main"]).model)


@pytest.mark.parametrize(
    ("override", "named"),
    [("annotation.noise.detect=true", r"annotation\.noise\.detect: false"), ("finetune.precision=bf16", r"finetune\.precision: fp32")],
)
def test_federated_refuses_what_would_read_client_rows_centrally_or_train_outside_fp32(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config("smoke", ["finetune.federated.enabled=true", override])
    load_config("smoke", [override])  # alone, each is a valid setting
