"""package: the champion as an MLflow pyfunc bundle; register: promote it in the Model Registry.

The bundle depends on the lightest runtime that serves the champion: an ONNX champion needs
onnxruntime + tokenizers only, a PyTorch one needs torch + transformers. `mlflow models
serve -m models:/<name>@champion` serves it, and so does `frugal serve`; docker/build-serve.sh builds an image of it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pandas as pd

from frugal.config import RunConfig
from frugal.modelio import Manifest
from frugal.paths import ROOT, ProjectPaths
from tasks import store, tracking
from tasks.common import DataRef, Ref, Variant, stage
from tasks.evaluate import measure_model, quality
from tasks.select import Selection

log = logging.getLogger(__name__)
BUNDLE = "bundle"
ALIAS = "champion"
_RUNTIMES = {
    "onnx": ("onnxruntime", "tokenizers"),
    "hf": ("torch", "transformers", "safetensors", "tokenizers"),
    "torch-int8": ("torch", "transformers", "safetensors", "tokenizers"),
    "hf-nf4": ("torch", "transformers", "safetensors", "tokenizers", "bitsandbytes", "accelerate"),
}
# The bundle's code (code/frugal/): the pyfunc, the runtime, the model folder format and the cascade, which import only each other.
SERVING_FIGURES = "serving.json"  # the champion's variant and measured metrics, read by frugal/serve/source.py
SERVING_CODE = ("__init__.py", "serve_model.py", "pyfunc.py", "runtime.py", "modelio.py", "cascade.py")


class Bundle(Ref):
    uri: str
    variant: str
    model_uri: str
    runtime: tuple[str, ...]


class Registration(Ref):
    version: str | None
    promoted: bool
    reason: str


class Incumbent(Ref):
    version: str
    model_uri: str | None  # the variant model it was registered from
    macro_f1: float
    usd_per_1m: float


def runtime(model_dir: Path) -> tuple[str, ...]:
    """The packages that serve a model folder: a cascade needs both of its parts' (read from their manifests)."""
    fmt = Manifest.load(model_dir).format
    if fmt != "cascade":
        return _RUNTIMES[fmt]
    from frugal.cascade import PARTS

    return tuple(dict.fromkeys(name for part in PARTS for name in runtime(model_dir / part)))


def requirements(fmt: str, model_dir: Path | None = None) -> list[str]:
    """Pinned to what this run used, so the served model behaves as the evaluated one (a cascade: pass its folder)."""
    names = ("mlflow", "pandas", "numpy", *(runtime(model_dir) if model_dir is not None else _RUNTIMES[fmt]))
    return [f"{name}=={md.version(name)}" for name in names]


@contextlib.contextmanager
def serving_code() -> Iterator[Path]:
    """A `frugal` package holding only the leaf predict runtime: the bundle needs neither pydantic, yaml nor tasks/."""
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "frugal"
        package.mkdir()
        for name in SERVING_CODE:
            shutil.copy(ROOT / "frugal" / name, package / name)
        yield package


def build_bundle(model_dir: Path, out: Path, sample_texts: list[str]) -> Path:
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    manifest = Manifest.load(model_dir)
    example = pd.DataFrame({"text": sample_texts})
    output = pd.DataFrame({"label": ["x"] * len(sample_texts), **{f"p_{label}": [0.0] * len(sample_texts) for label in manifest.labels}})
    with serving_code() as code:
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(code / "serve_model.py"),
            artifacts={"model": str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=requirements(manifest.format, model_dir),
            signature=infer_signature(example, output),
            input_example=example,
        )
    return out


@stage(name="package")
def package(selection: Selection, variants: list[Variant], data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str) -> Bundle:
    champion = next(v for v in variants if v.name == selection.champion.variant)
    assert champion.model is not None
    model_dir = store.model_dir(champion.model, paths)
    fmt = Manifest.load(model_dir).format
    with tempfile.TemporaryDirectory() as tmp:
        sample = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")["text"][:2])
        bundle = build_bundle(model_dir, Path(tmp) / BUNDLE, sample)
        # What evaluation measured travels with the bundle: served from a folder (the image), requests are still metered.
        figures = {"variant": champion.name, "parent_run": parent_run, "metrics": selection.champion.metrics}
        (bundle / SERVING_FIGURES).write_text(json.dumps(figures, indent=2))
        tracking.log_dir(parent_run, bundle, BUNDLE)
    log.info("Packaged %s (%s runtime) as runs:/%s/%s", champion.name, fmt, parent_run, BUNDLE)
    return Bundle(uri=f"runs:/{parent_run}/{BUNDLE}", variant=champion.name, model_uri=champion.model.uri, runtime=runtime(model_dir))


def incumbent(name: str, data: DataRef, cfg: RunConfig, paths: ProjectPaths, measure: Callable[..., Any]) -> Incumbent | None:
    """The current champion, re-measured now, on this run's test split and hardware (its cost is never a stale tag)."""
    from mlflow.exceptions import MlflowException

    try:
        version = tracking.mlflow_client().get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    was = version.tags.get("model_uri")
    try:
        measured = measure(model_uri=f"models:/{name}/{version.version}", data=data, evaluate_cfg=cfg.evaluate, paths=paths)
    except Exception as exc:  # a champion that no longer loads cannot defend its place
        log.warning("The current champion v%s could not be re-measured (%s); it will be replaced", version.version, exc)
        return Incumbent(version=str(version.version), model_uri=was, macro_f1=float("-inf"), usd_per_1m=float("inf"))
    truth = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")["label"])
    f1 = quality(truth, measured.predicted, cfg.data.labels)["macro_f1"]
    return Incumbent(version=str(version.version), model_uri=was, macro_f1=f1, usd_per_1m=measured.metrics["usd_per_1m"])


class Rule(NamedTuple):
    baseline_f1: float  # this run's baseline macro-F1
    tolerance: float  # select.tolerance
    min_saving: float  # select.promote_min_saving

    @property
    def floor(self) -> float:
        """This run's quality bar."""
        return self.baseline_f1 - self.tolerance


def decide(current: Incumbent | None, challenger: dict[str, float], model_uri: str, rule: Rule) -> tuple[bool, str]:
    """The champion/challenger rule (select.tolerance, select.promote_min_saving), on scores measured in this run.

    A challenger more than `tolerance` below the champion's quality never wins on price. A
    champion below this run's quality bar (baseline macro-F1 - tolerance) is replaced; one that
    meets it stays unless the challenger is at least `min_saving` cheaper.
    """
    if current is None:
        return True, "no champion yet"
    if current.model_uri == model_uri:
        return False, f"kept v{current.version}: it is already this model"
    seen = f"v{current.version} (macro-F1 {current.macro_f1:.4f}, ${current.usd_per_1m:.4f}/1M, re-measured in this run)"
    if challenger["macro_f1"] < current.macro_f1 - rule.tolerance:
        return False, f"kept {seen}: the challenger's macro-F1 {challenger['macro_f1']:.4f} is more than {rule.tolerance} below it"
    if current.macro_f1 < rule.floor:
        return True, f"challenger replaces {seen}: below this run's quality bar {rule.floor:.4f}"
    if challenger["usd_per_1m"] <= current.usd_per_1m * (1 - rule.min_saving):
        return True, f"challenger at ${challenger['usd_per_1m']:.4f}/1M is >= {rule.min_saving:.0%} cheaper than {seen}"
    return False, f"kept {seen}: meets the quality bar {rule.floor:.4f} and the challenger is not {rule.min_saving:.0%} cheaper"


@stage(name="register")
def register(
    bundle: Bundle, selection: Selection, data: DataRef, cfg: RunConfig, paths: ProjectPaths, parent_run: str,
    measure: Callable[..., Any] | None = None,
) -> Registration:  # fmt: skip
    """Register the bundle and move `champion` to it, unless the current champion is still as good and cheaper.

    The decision and the promotion happen under one lock (`promotion_lock`), so two runs
    finishing together promote at most once.
    """
    import mlflow

    name, new = cfg.registered_model_name, selection.champion.metrics
    with promotion_lock(name, paths):
        current = incumbent(name, data, cfg, paths, measure or measure_model)
        rule = Rule(selection.baseline.metrics["macro_f1"], cfg.select.tolerance, cfg.select.promote_min_saving)
        promote, why = decide(current, new, bundle.model_uri, rule)
        scores = {"challenger_macro_f1": new["macro_f1"], "challenger_usd_per_1m": new["usd_per_1m"]}
        if current is not None:
            scores |= {"incumbent_macro_f1": current.macro_f1, "incumbent_usd_per_1m": current.usd_per_1m}
        tracking.log_metrics(parent_run, {k: v for k, v in scores.items() if abs(v) != float("inf")})
        if not promote:
            tracking.set_tags(parent_run, {"registry": why, "registry_decision": "kept"})
            log.info("Registry: %s", why)
            return Registration(version=None, promoted=False, reason=why)
        tags = {
            "variant": bundle.variant, "pipeline_run_id": parent_run, "variant_run_id": selection.champion.run_id,
            "model_uri": bundle.model_uri, "data_hash": data.md5, "config_hash": cfg.digest(),
            "macro_f1": new["macro_f1"], "usd_per_1m": new["usd_per_1m"],
        }  # fmt: skip
        version = mlflow.register_model(bundle.uri, name, tags={k: str(v) for k, v in tags.items()})
        tracking.mlflow_client().set_registered_model_alias(name, ALIAS, version.version)
    reason = f"{name} v{version.version} ({bundle.variant}) is now @{ALIAS}: {why}"
    tracking.set_tags(parent_run, {"registry": reason, "registry_decision": "promoted", "registered_version": version.version})
    log.info("Registry: %s", reason)
    return Registration(version=str(version.version), promoted=True, reason=reason)


PROMOTION_LIMIT = "frugal-promotion"


@contextlib.contextmanager
def promotion_lock(name: str, paths: ProjectPaths) -> Iterator[None]:
    """A file lock serialises the processes of this machine, which are all that can write a SQLite store.

    A store other processes can reach (a tracking server) also takes the Prefect limit. Not for
    SQLite: Prefect's temporary server never repossesses the slot of a holder that was killed,
    so a SIGKILL during a promotion would block every later one.
    """
    from filelock import FileLock

    paths.work.mkdir(parents=True, exist_ok=True)
    with FileLock(str(paths.work / f"promotion-{name}.lock")):
        if urlparse(tracking.mlflow_client().tracking_uri).scheme in ("sqlite", "file", ""):
            yield
            return
        from prefect.concurrency.sync import concurrency

        ensure_promotion_limit()
        # A server-side lease: a killed holder's slot comes back after lease_duration (server services run).
        with concurrency(PROMOTION_LIMIT, occupy=1, lease_duration=300, timeout_seconds=1800):
            yield


def ensure_promotion_limit() -> None:
    """Create the global concurrency limit (one slot) that serialises promotions; `frugal deploy` calls it too."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(PROMOTION_LIMIT)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=PROMOTION_LIMIT, limit=1))
            except ObjectAlreadyExists:
                pass
