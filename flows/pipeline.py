"""The pipeline, as in DESIGN.md: prepare -> validate -> version -> finetune -> compress -> evaluate -> select -> package -> register."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from frugal.logs import quiet_user_errors
from frugal.paths import ProjectPaths
from tasks import tracking
from tasks.compression import compress
from tasks.data import prepare
from tasks.evaluate import evaluate
from tasks.finetune import finetune
from tasks.modeling import check_source
from tasks.package import Registration, package, register
from tasks.select import Selection, select
from tasks.validate import validate
from tasks.versioning import version_data


@dataclass(frozen=True)
class PipelineResult:
    run_id: str
    data_hash: str
    selection: Selection
    registration: Registration


@flow(name="frugal-pipeline", log_prints=True)
def pipeline(config: str = "default", overrides: list[str] | None = None, project_dir: str | None = None) -> PipelineResult:
    quiet_user_errors()
    paths = ProjectPaths.resolve(project_dir)
    cfg = tracking.load_config_or_fail_run(config, overrides or [], paths)
    with tracking.parent_run(cfg, paths) as run_id:
        check_source(cfg.model)
        staged = prepare(cfg, paths, run_id)
        validate(staged, cfg, run_id)
        data = version_data(staged, cfg, paths, run_id)
        baseline = finetune(data, cfg, paths, run_id)
        variants = [baseline] + [compress(name, steps, baseline, data, cfg, paths, run_id) for name, steps in cfg.compress.variants.items()]
        scores = [s for s in (evaluate(v, data, cfg) for v in variants) if s is not None]
        selection = select(scores, variants, cfg, run_id)
        bundle = package(selection, variants, data, cfg, run_id)
        registration = register(bundle, selection, data, cfg, run_id)
    return PipelineResult(run_id, data.md5 or "", selection, registration)
