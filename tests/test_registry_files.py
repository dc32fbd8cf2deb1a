"""The registry never points at nothing (frugal/artifacts.py): a champion whose files are gone from the artifact store is
replaced by `register` (never kept, even by a rerun of the same model), reported by `frugal doctor` (exit 1) and refused by
`frugal serve` (one message); an intact champion passes all three.

Real MLflow: the session's SQLite store and its file artifact store, a real bundle of the smoke baseline. "The store lost
its objects" is the version's folder deleted on disk, which MLflow lists as empty, as S3 answers for lost objects.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import Built, LocalSplits

from frugal.cli import main
from frugal.config import RunConfig
from frugal.config.serve import load_settings
from frugal.errors import ModelError
from frugal.fetch import in_place
from frugal.paths import ProjectPaths
from frugal.runtime.manifest import MANIFEST
from frugal.serve.source import source_for
from tasks.package import Bundle, package
from tasks.plumbing import tracking
from tasks.plumbing.refs import Scores, Variant
from tasks.register import ALIAS, Registration, register
from tasks.select import Selection


def named(cfg: RunConfig, name: str) -> RunConfig:
    return cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"registered_model": name})})


def selection(run_id: str) -> Selection:
    """The baseline (of run `run_id`) as champion; its figures are claimed (a missing or identical incumbent is never measured)."""
    scores = Scores(variant="baseline", run_id=run_id, metrics={"macro_f1": 0.5, "usd_per_1m": 0.02, "throughput_per_s": 100.0})
    return Selection(champion=scores, baseline=scores, frontier=("baseline",), table_md="")


def run_register(cfg: RunConfig, baseline: Built, splits: LocalSplits, store: ProjectPaths, bundle: Bundle | None = None) -> Registration:
    """One pipeline run's package + register of the baseline (a rerun packages the same model again); `bundle` instead of packaging."""
    chosen, variants = selection(baseline.run_id), [Variant(name="baseline", model=baseline.ref, steps=(baseline.run_id,))]
    with tracking.parent_run(cfg, store, run_name="registry-files") as run_id:
        bundle = bundle or package.fn(chosen, variants, splits.ref, cfg, store, run_id)
        registration = register.fn(bundle, chosen, splits.ref, cfg, store, run_id)
    assert tracking.client(cfg, store).get_run(run_id).data.tags["registry"] in registration.reason
    return registration


def doctor(name: str, store: ProjectPaths, capsys: Any) -> tuple[int, str]:
    code = main(["doctor", "-c", "smoke", "-s", f"tracking.registered_model={name}", "--project-dir", str(store.root)])
    return code, capsys.readouterr().out


def serve_overrides(name: str, cfg: RunConfig, store: ProjectPaths) -> list[str]:
    return [f"model=models:/{name}@{ALIAS}", f"tracking_uri={tracking.client(cfg, store).tracking_uri}"]


def test_an_intact_champion_is_kept_reported_present_and_served(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, capsys: Any
) -> None:
    name = "frugal-files-intact"
    cfg = named(smoke_cfg, name)
    first = run_register(cfg, baseline, smoke_splits, store)
    assert first.promoted and first.version == "1"
    again = run_register(cfg, baseline, smoke_splits, store)  # a cached rerun: the same model
    assert not again.promoted and again.reason == "kept v1: it is already this model"

    code, out = doctor(name, store, capsys)
    assert code == 0 and f"{name}@{ALIAS} is v1: its files are in the artifact store.\n" in out
    source = source_for(load_settings("serve", serve_overrides(name, cfg, store)), store.root)
    assert (source.fetch(source.current()).model_dir / MANIFEST).is_file()


def test_a_champion_without_files_is_replaced_reported_and_refused(
    baseline: Built, smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, capsys: Any, tmp_path: Path
) -> None:
    name = "frugal-files-lost"
    cfg = named(smoke_cfg, name)
    assert run_register(cfg, baseline, smoke_splits, store).version == "1"
    client = tracking.client(cfg, store)
    where = client.get_model_version_download_uri(name, "1")
    folder = in_place(where)
    assert folder is not None and (folder / "MLmodel").is_file()
    shutil.rmtree(folder)  # the store lost v1's objects; the registry still lists v1 as @champion

    code, out = doctor(name, store, capsys)
    assert code == 1
    assert f"{name}@{ALIAS} is v1, whose artifacts are missing from the store (nothing is stored at {where})." in out
    assert "  Fix: rerun `frugal run` with this config to register a new champion, or restore the artifact store." in out

    serve = ["serve", "--project-dir", str(tmp_path), *[f for o in serve_overrides(name, cfg, store) for f in ("-s", o)]]
    assert main(serve) == 2
    err = capsys.readouterr().err
    assert (
        f"frugal: error: models:/{name}@{ALIAS} is version 1 of {name}, whose files are missing from the artifact store "
        f"(nothing is stored at {where}).\n  Fix: Run `frugal run` to register a new champion, or restore the artifact store.\n"
    ) in err
    assert "Traceback" not in err

    replaced = run_register(cfg, baseline, smoke_splits, store)  # a cached rerun: the same model as v1, which it must not keep
    assert replaced.promoted and replaced.version == "2"
    why = f"v1's artifacts are missing from the store (nothing is stored at {where}): replaced"
    assert replaced.reason == f"{name} v2 (baseline) is now @{ALIAS}: {why}"
    assert str(client.get_model_version_by_alias(name, ALIAS).version) == "2"
    assert doctor(name, store, capsys)[0] == 0
    source_for(load_settings("serve", serve_overrides(name, cfg, store)), store.root)  # serves again


@pytest.mark.parametrize("logged", [["MLmodel"], []], ids=["partial", "empty"])
def test_a_version_without_files_never_gets_the_alias(
    logged: list[str], smoke_splits: LocalSplits, smoke_cfg: RunConfig, store: ProjectPaths, tmp_path: Path
) -> None:
    """A bundle missing from the store when it is registered: one ModelError, and @champion is not moved (no model needed)."""
    name = f"frugal-files-unstored-{len(logged)}"
    cfg = named(smoke_cfg, name)
    for file in logged:
        (tmp_path / file).write_text("a bundle that lost its model\n")
    with tracking.parent_run(cfg, store, run_name="registry-files") as run_id:
        if logged:
            tracking.log_dir(run_id, tmp_path, "bundle")
        bundle = Bundle(uri=f"runs:/{run_id}/bundle", variant="baseline", model_uri="runs:/a-variant/model", runtime=())
        with pytest.raises(ModelError, match=rf"is not in the artifact store \(.*\): .*registered as {name}.*, @{ALIAS} not moved"):
            register.fn(bundle, selection("a-variant"), smoke_splits.ref, cfg, store, run_id)
    client = tracking.client(cfg, store)
    assert not client.search_model_versions(f"name = '{name}'") or not client.get_registered_model(name).aliases
