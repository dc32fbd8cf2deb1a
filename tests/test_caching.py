"""Cache keys from content: a stage's code version is the import closure of what it runs; data enters by its hash.

(The reuse across experiments this gives, end to end, is tests/test_flow.py::test_another_experiment_reuses_the_baseline.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from frugal import codegraph
from frugal.config import StepConfig
from tasks.cascade import cascade_model
from tasks.compress import compress_step
from tasks.evaluate import measure_model
from tasks.finetune import finetune
from tasks.label_noise import label_noise
from tasks.plumbing.caching import CodeVersion, DataContent, MeasuringMachine
from tasks.plumbing.refs import DataRef

METHODS = ("onnx_export", "onnx_int8", "onnx_int8_plain", "dynamic_int8", "prune", "distill", "sparsity", "lora")
STAGES = {"finetune": finetune, "measure": measure_model, "cascade": cascade_model, "label_noise": label_noise}


def code_policy(task) -> CodeVersion:  # noqa: ANN001 - a Prefect task
    """The CodeVersion part of a stage's real cache policy."""
    return next(p for p in task.cache_policy.policies if isinstance(p, CodeVersion))


def keys() -> dict[str, str]:
    """Every stage's code key, and a compression step's per method."""
    out = {name: code_policy(task).compute_key(None, {}, {}) for name, task in STAGES.items()}
    step = code_policy(compress_step)
    return out | {f"step:{m}": step.compute_key(None, {"step": StepConfig(method=m)}, {}) for m in METHODS}


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's source that the code versions are read from (so a test may edit it)."""
    for package in codegraph.PACKAGES:
        shutil.copytree(codegraph.ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codegraph, "ROOT", tmp_path)
    return tmp_path


def edited(checkout: Path, relative: str) -> dict[str, str]:
    """The keys after appending a comment to one module."""
    path = checkout / relative
    path.write_text(path.read_text() + "\n# an edit\n")
    return keys()


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {name for name in before if before[name] != after[name]}


def test_editing_a_module_a_method_only_imports_invalidates_that_methods_steps_and_no_others(checkout: Path) -> None:
    """ml/compress/onnx.py is imported by the ONNX methods alone: exactly their steps get new keys."""
    before = keys()
    assert changed(before, edited(checkout, "ml/compress/onnx.py")) == {"step:onnx_export", "step:onnx_int8", "step:onnx_int8_plain"}


def test_editing_the_families_invalidates_the_methods_that_use_them(checkout: Path) -> None:
    before = keys()
    after = changed(before, edited(checkout, "ml/families.py"))
    assert {"step:prune", "step:distill", "step:onnx_export", "step:onnx_int8"} <= after
    assert not after & {"step:dynamic_int8", "step:sparsity", "step:lora", "finetune", "measure", "cascade", "label_noise"}


def test_editing_a_format_invalidates_the_measurements(checkout: Path) -> None:
    """The measure stage runs the runtime's registry, which runs every format module it discovers (CODE_DEPS)."""
    before = keys()
    assert {"measure", "cascade"} <= changed(before, edited(checkout, "frugal/runtime/formats/onnx.py"))


def test_editing_a_method_invalidates_its_own_steps_only(checkout: Path) -> None:
    before = keys()
    assert changed(before, edited(checkout, "ml/compress/methods/prune.py")) == {"step:prune"}


def test_data_enters_keys_by_its_content_hash_never_by_the_run_that_logged_it() -> None:
    key = DataContent().compute_key
    one = DataRef(md5="a" * 32 + ".dir", uri="runs:/run-of-experiment-a/data/splits", rows={"train": 1})
    same_data_elsewhere = one.model_copy(update={"uri": "runs:/run-of-experiment-b/data/splits"})
    other = one.model_copy(update={"md5": "b" * 32 + ".dir"})
    assert key(None, {"data": one}, {}) == key(None, {"data": same_data_elsewhere}, {}) != key(None, {"data": other}, {})


def test_a_measurement_is_keyed_by_the_machine_that_makes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Figures measured elsewhere are not reused here: another fingerprint (or thread count) is another key."""
    from frugal.config import load_config
    from tasks.plumbing import caching

    (policy,) = [p for p in measure_model.cache_policy.policies if isinstance(p, MeasuringMachine)]
    evaluate_cfg = load_config("smoke").evaluate
    inputs = {"evaluate_cfg": evaluate_cfg}
    here = policy.compute_key(None, inputs, {})
    assert here == policy.compute_key(None, inputs, {})
    more_threads = evaluate_cfg.model_copy(update={"threads": evaluate_cfg.threads + 1})
    assert here != policy.compute_key(None, {"evaluate_cfg": more_threads}, {})
    monkeypatch.setattr(caching, "machine_fingerprint", lambda threads: {"machine_fingerprint": "another-machine"})
    assert policy.compute_key(None, inputs, {}) == "another-machine"
    assert not any(isinstance(p, MeasuringMachine) for p in finetune.cache_policy.policies)  # a trained model is the same anywhere
