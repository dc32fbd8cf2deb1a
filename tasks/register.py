"""register: promote the packaged champion in the Model Registry, unless the current champion is still as good and cheaper.

The current champion is re-measured in this run (its cost is never a stale tag); the decision and the
promotion happen under one lock (`promotion_lock`), so two runs finishing together promote at most once.
A champion whose files are gone from the artifact store is replaced, never kept, and a new version is
checked in the store before the alias moves to it (frugal/artifacts.py): the alias never points at nothing.
Quality and cost are the run's own pair (`RunConfig.quality_metric`, `cost_metric`): macro-F1 and $ per 1M
predictions for a classifier, generate.metric and $ per 1M output tokens for a generative model.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple
from urllib.parse import urlparse

import pandas as pd

from frugal import artifacts
from frugal.config import RunConfig
from frugal.errors import ModelError
from frugal.paths import ProjectPaths
from ml.quality import quality
from tasks.evaluate import measure_inputs, measure_model
from tasks.package import Bundle
from tasks.plumbing import store, tracking
from tasks.plumbing.limits import ensure_limit
from tasks.plumbing.refs import DataRef, Ref, Scores
from tasks.plumbing.stage import stage
from tasks.select import LABELS, Selection

log = logging.getLogger(__name__)
ALIAS = "champion"
PROMOTION_LIMIT = "frugal-promotion"


class Registration(Ref):
    version: str | None
    promoted: bool
    reason: str


class Incumbent(Ref):
    version: str
    model_uri: str | None  # the variant model it was registered from
    macro_f1: float  # its quality: cfg.quality_metric (macro-F1 for a classifier)
    usd_per_1m: float  # its cost: cfg.cost_metric ($ per 1M predictions for a classifier)
    missing: str | None = None  # why its files are not in the artifact store (frugal/artifacts.py); None: they are
    machine: str | None = None  # the fingerprint of the machine that re-measured it (frugal/hardware.py); None: not measured


def incumbent(name: str, data: DataRef, cfg: RunConfig, paths: ProjectPaths, measure: Callable[..., Any]) -> Incumbent | None:
    """The current champion, re-measured now, on this run's test split and hardware (its cost is never a stale tag)."""
    from mlflow.exceptions import MlflowException

    client = tracking.mlflow_client()
    try:
        version = client.get_model_version_by_alias(name, ALIAS)
    except MlflowException:
        return None
    was = version.tags.get("model_uri")
    gone = artifacts.missing(client, name, version.version)
    if gone is not None:  # checked before measuring: a download of nothing is an empty folder, not an error
        log.warning("The current champion v%s has no files in the artifact store (%s); it will be replaced", version.version, gone)
        return Incumbent(version=str(version.version), model_uri=was, macro_f1=float("-inf"), usd_per_1m=float("inf"), missing=gone)
    try:
        measured = measure(model_uri=f"models:/{name}/{version.version}", data=data, paths=paths, **measure_inputs(cfg))
    except Exception as exc:  # a champion that no longer loads cannot defend its place
        log.warning("The current champion v%s could not be re-measured (%s); it will be replaced", version.version, exc)
        return Incumbent(version=str(version.version), model_uri=was, macro_f1=float("-inf"), usd_per_1m=float("inf"))
    f1, usd = quality_on_test(measured, data, cfg, paths), measured.metrics[cfg.cost_metric]
    return Incumbent(version=str(version.version), model_uri=was, macro_f1=f1, usd_per_1m=usd, machine=measured.fingerprint)


def quality_on_test(measured: Any, data: DataRef, cfg: RunConfig, paths: ProjectPaths) -> float:
    """A re-measured model's quality on this run's test split: macro-F1, or the score a generative measurement made itself."""
    if cfg.task == "generate":
        return measured.metrics[cfg.quality_metric]
    truth = list(pd.read_parquet(store.data_dir(data, paths) / "test.parquet")["label"])
    return quality(truth, measured.predicted, cfg.data.labels)["macro_f1"]


def challenger_figures(
    champion: Scores, current: Incumbent | None, model_uri: str, data: DataRef, cfg: RunConfig, paths: ProjectPaths,
    measure: Callable[..., Any],
) -> tuple[dict[str, float], str | None]:  # fmt: skip
    """The challenger's quality and cost, and the fingerprint they were measured on: the incumbent's where they can be.

    Its figures from the evaluate step may come from another machine (another worker of the measure pool, a
    run before): then it is measured again with `measure`, as the incumbent was. Where that fails, or lands on
    yet another machine, `decide` sees two fingerprints and compares no prices.
    """
    if current is None or current.machine in (None, champion.machine) or current.model_uri == model_uri:
        return champion.metrics, champion.machine
    try:
        measured = measure(model_uri=model_uri, data=data, paths=paths, **measure_inputs(cfg))
    except Exception as exc:
        log.warning("The challenger could not be re-measured beside the champion (%s); their costs are not compared", exc)
        return champion.metrics, champion.machine
    figures = {cfg.quality_metric: quality_on_test(measured, data, cfg, paths), cfg.cost_metric: measured.metrics[cfg.cost_metric]}
    return figures, measured.fingerprint


class Rule(NamedTuple):
    baseline_f1: float  # this run's baseline quality (macro-F1 for a classifier)
    tolerance: float  # select.tolerance
    min_saving: float  # select.promote_min_saving
    quality: str = "macro_f1"  # the metric names the challenger's figures go by (RunConfig.quality_metric, cost_metric)
    cost: str = "usd_per_1m"

    @property
    def floor(self) -> float:
        """This run's quality bar."""
        return self.baseline_f1 - self.tolerance

    @property
    def quality_label(self) -> str:
        return LABELS.get(self.quality, self.quality)

    @property
    def per(self) -> str:
        return "/1M tokens" if self.cost == "usd_per_1m_tokens" else "/1M"


def decide(
    current: Incumbent | None, challenger: dict[str, float], model_uri: str, rule: Rule, machine: str | None = None
) -> tuple[bool, str]:
    """The champion/challenger rule (select.tolerance, select.promote_min_saving), on scores measured in this run.

    A challenger more than `tolerance` below the champion's quality never wins on price. A
    champion below this run's quality bar (baseline quality - tolerance) is replaced; one that
    meets it stays unless the challenger is at least `min_saving` cheaper, both priced on one
    machine: `machine`, the challenger's fingerprint, must be the champion's (else it stays).
    """
    if current is None:
        return True, "no champion yet"
    if current.missing is not None:  # before "already this model": a cached rerun has the same model_uri as a champion now gone
        return True, f"v{current.version}'s artifacts are missing from the store ({current.missing}): replaced"
    if current.model_uri == model_uri:
        return False, f"kept v{current.version}: it is already this model"
    on = f" on machine {current.machine}" if current.machine else ""
    quality, cost, label = challenger[rule.quality], challenger[rule.cost], rule.quality_label
    seen = f"v{current.version} ({label} {current.macro_f1:.4f}, ${current.usd_per_1m:.4f}{rule.per}, re-measured in this run{on})"
    if quality < current.macro_f1 - rule.tolerance:
        return False, f"kept {seen}: the challenger's {label} {quality:.4f} is more than {rule.tolerance} below it"
    if current.macro_f1 < rule.floor:
        return True, f"challenger replaces {seen}: below this run's quality bar {rule.floor:.4f}"
    if machine != current.machine:  # two machines' speeds differ by more than the margin: a price from each proves nothing
        return False, f"kept {seen}: the challenger's cost was measured on machine {machine or 'unknown'}, not compared"
    if cost <= current.usd_per_1m * (1 - rule.min_saving):
        return True, f"challenger at ${cost:.4f}{rule.per} is >= {rule.min_saving:.0%} cheaper than {seen}"
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
    name, measure = cfg.registered_model_name, measure or measure_model
    with promotion_lock(name, paths):
        current = incumbent(name, data, cfg, paths, measure)
        new, machine = challenger_figures(selection.champion, current, bundle.model_uri, data, cfg, paths, measure)
        q, c = cfg.quality_metric, cfg.cost_metric
        rule = Rule(selection.baseline.metrics[q], cfg.select.tolerance, cfg.select.promote_min_saving, q, c)
        promote, why = decide(current, new, bundle.model_uri, rule, machine)
        machines = {"challenger_machine": machine or "unknown", "incumbent_machine": (current and current.machine) or "none"}
        scores = {f"challenger_{q}": new[q], f"challenger_{c}": new[c]}
        if current is not None:
            scores |= {f"incumbent_{q}": current.macro_f1, f"incumbent_{c}": current.usd_per_1m}
        tracking.log_metrics(parent_run, {k: v for k, v in scores.items() if abs(v) != float("inf")})
        if not promote:
            tracking.set_tags(parent_run, {"registry": why, "registry_decision": "kept", **machines})
            log.info("Registry: %s", why)
            return Registration(version=None, promoted=False, reason=why)
        tags = {
            "variant": bundle.variant, "pipeline_run_id": parent_run, "variant_run_id": selection.champion.run_id,
            "model_uri": bundle.model_uri, "data_hash": data.md5, "config_hash": cfg.digest(),
            q: new[q], c: new[c], "machine_fingerprint": machine or "unknown",
        }  # fmt: skip
        version = register_stored(bundle.uri, name, {k: str(v) for k, v in tags.items()})
        tracking.mlflow_client().set_registered_model_alias(name, ALIAS, version)
    reason = f"{name} v{version} ({bundle.variant}) is now @{ALIAS}: {why}"
    tracking.set_tags(parent_run, {"registry": reason, "registry_decision": "promoted", "registered_version": version, **machines})
    log.info("Registry: %s", reason)
    return Registration(version=version, promoted=True, reason=reason)


def register_stored(uri: str, name: str, tags: dict[str, str]) -> str:
    """`mlflow.register_model` of a bundle whose files are in the artifact store, checked before and after: one ModelError if not.

    Before, because MLflow fails on a bundle without MLmodel with an error about logged models; after, because what
    counts is where the new version points. The caller moves the alias only after this returns.
    """
    import mlflow

    client = tracking.mlflow_client()
    gone = artifacts.missing_at(client, uri)
    if gone is not None:
        raise not_stored(uri, gone, f"not registered as {name}")
    version = str(mlflow.register_model(uri, name, tags=tags).version)
    gone = artifacts.missing(client, name, version)
    if gone is not None:
        raise not_stored(uri, gone, f"registered as {name} v{version}")
    return version


def not_stored(uri: str, gone: str, registered: str) -> ModelError:
    return ModelError(
        f"The bundle {uri} is not in the artifact store ({gone}): {registered}, @{ALIAS} not moved.",
        "Check that the artifact store (the tracking server's artifact root, its S3 bucket) is reachable and writable; rerun `frugal run`.",
    )


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

        ensure_limit(PROMOTION_LIMIT)
        # A server-side lease: a killed holder's slot comes back after lease_duration (server services run).
        with concurrency(PROMOTION_LIMIT, occupy=1, lease_duration=300, timeout_seconds=1800):
            yield
