"""The pipeline, as in DESIGN.md: prepare -> validate -> version -> finetune -> compress -> evaluate -> select -> package -> register.

With annotation.noise.detect, a label_noise stage (tasks/noise.py) runs before finetune and hands it the flagged rows.

Stages hand each other references (tasks/plumbing/refs.py). Fine-tuning, every compression step and
every measurement are cached Prefect tasks whose results persist in `result_storage`: a rerun
reuses what is done. `tasks.dispatch` sends them to work pools in `execution: workers`.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow

from frugal.config import GenerateConfig, RunConfig
from frugal.logs import quiet_user_errors
from frugal.paths import ProjectPaths
from ml.compress.plan import BASELINE_FORMATS, plan
from ml.generation.modeling import check_generative_source
from ml.modeling import check_source
from tasks import search, search_generate
from tasks.cascade import build_cascades
from tasks.compress import build_variant
from tasks.dispatch import Dispatch, result_storage
from tasks.evaluate import evaluate
from tasks.label_noise import detect_label_noise, for_finetune
from tasks.package import package
from tasks.plumbing import config as config_file
from tasks.plumbing import tracking
from tasks.plumbing.refs import Ref, Variant
from tasks.prepare import prepare
from tasks.register import Registration, register
from tasks.search import usd_per_hour
from tasks.select import Selection, select
from tasks.validate import validate
from tasks.version import restore_data, version_data

Until = Literal["data", "finetune", "compress"]


class PipelineResult(Ref):
    run_id: str
    data_hash: str
    stopped_after: Until | None = None  # a partial run (dvc.yaml's stages) has no selection or registration
    selection: Selection | None = None
    registration: Registration | None = None


@flow(name="frugal-pipeline", log_prints=True)
def pipeline(
    config: str = "default", overrides: list[str] | None = None, project_dir: str | None = None, until: Until | None = None
) -> PipelineResult:
    quiet_user_errors()
    paths = ProjectPaths.resolve(project_dir)
    cfg = config_file.load_or_fail_run(config, overrides or [], paths)
    planned = plan(cfg.compress, BASELINE_FORMATS[cfg.task])  # the chains as method instances, formats checked
    on = Dispatch(cfg, paths)
    with tracking.parent_run(cfg, paths) as run_id:
        check_generative_source(cfg.model, cfg.generate) if cfg.task == "generate" else check_source(cfg.model)
        staged = restore_data(cfg, paths, run_id) if cfg.data.version else prepare(cfg, paths, run_id)
        validate(staged, cfg, paths, run_id)
        data = version_data(staged, cfg, paths, run_id)
        if until == "data":
            return stopped(run_id, data.md5, until)
        noise = detect_label_noise(data, cfg, paths, run_id)  # None unless annotation.noise.detect
        base = on.finetune(
            data=data, model=cfg.model, train_cfg=cfg.finetune, labels=cfg.data.labels, seed=cfg.seed, paths=paths, parent_run=run_id,
            noise=for_finetune(noise), **task_settings(cfg),
        )  # fmt: skip
        if until == "finetune":
            return stopped(run_id, data.md5, until)
        variants = [Variant(name="baseline", model=base, steps=(base.run_id,))]
        for name, steps in planned.chains.items():
            variants.append(build_variant(name, steps, base, data, cfg, paths, run_id, on.compress_step))
        searching = search_generate if cfg.task == "generate" else search  # the same search, over causal LM shapes
        searched, priced = searching.search(cfg, base, data, paths, run_id, on.compress_step) if cfg.compress.search.enabled else ([], None)
        variants += searched + build_cascades(cfg, variants, data, paths, run_id)  # cascades in this process: two models over val
        if until == "compress":
            return stopped(run_id, data.md5, until)
        baseline = evaluate(variants[0], None, data, cfg, paths, run_id, measure=on.measure)
        scores = [baseline] + [evaluate(v, baseline, data, cfg, paths, run_id, measure=on.measure) for v in variants[1:]]
        selection = select([s for s in scores if s is not None], variants, cfg, run_id)
        if priced is not None:  # predicted vs measured cost of the searched shapes
            searching.report(priced, [s for s in scores if s is not None], run_id, usd_per_hour(cfg))
        bundle = package(selection, variants, data, cfg, paths, run_id)
        registration = register(bundle, selection, data, cfg, paths, run_id, measure=on.measure)
    return PipelineResult(run_id=run_id, data_hash=data.md5, selection=selection, registration=registration)


def task_settings(cfg: RunConfig) -> dict[str, GenerateConfig]:
    """What a stage needs besides its classify arguments for task generate (the prompt format and decoding settings)."""
    return {"generate_cfg": cfg.generate} if cfg.task == "generate" else {}


def stopped(run_id: str, data_hash: str, until: Until) -> PipelineResult:
    """The result of a run asked to stop after a stage (each stage of dvc.yaml is one such run; Prefect reuses the earlier ones)."""
    tracking.set_tags(run_id, {"stopped_after": until})
    return PipelineResult(run_id=run_id, data_hash=data_hash, stopped_after=until)


def run(
    config: str = "default", overrides: list[str] | None = None, project_dir: str | None = None, until: Until | None = None
) -> PipelineResult:
    """Run the pipeline with the result storage its config names (the entry point of the CLI, tests and benchmarks)."""
    return pipeline.with_options(result_storage=result_storage(config, overrides or [], project_dir), result_serializer="json")(
        config=config, overrides=overrides, project_dir=project_dir, until=until
    )
