"""The plan: a config's compression chains as typed method instances, made and checked once.

`plan` is the one place a chain's methods are looked up and their options validated, and the
formats along each chain are checked (each step must take what the one before it gives, the first
the fine-tuned `hf` baseline), so a bad chain is one config error before anything runs. The
pipeline builds, dispatches and keys its steps from the plan (tasks/compress.py, tasks/dispatch.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

from frugal.config import CompressConfig, StepConfig
from frugal.errors import ConfigError
from ml.compress import Method, get_method

BASELINE_FORMAT = "hf"  # what fine-tuning gives every chain's first step
BASELINE_FORMATS = {"classify": "hf", "generate": "causal-hf"}  # ... by task (RunConfig.task)


@dataclass(frozen=True)
class Step:
    """One step of a chain: its config (what keys the step's cache) and the method instance that runs it."""

    config: StepConfig
    method: Method

    @property
    def heavy(self) -> bool:
        return self.method.heavy


@dataclass(frozen=True)
class Plan:
    chains: dict[str, list[Step]]  # variant name -> its steps, in config order


def plan(compress: CompressConfig, baseline_format: str = BASELINE_FORMAT) -> Plan:
    """Every chain of the config as method instances, the first step taking `baseline_format` (BASELINE_FORMATS[cfg.task]);
    one ConfigError naming each bad variant otherwise."""
    chains, problems = {}, []
    for name, steps in compress.chains().items():
        try:
            chains[name] = chain(name, steps, baseline_format)
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("Invalid compress.variants: " + "; ".join(problems) + ".",
                          "Correct the variant (methods and their options: docs/configuration.md 'Compression methods').")  # fmt: skip
    return Plan(chains)


def chain(name: str, steps: list[StepConfig], baseline_format: str = BASELINE_FORMAT) -> list[Step]:
    """A variant's steps as method instances, each taking the format the step before it gives."""
    where, planned, given = f"variant {name!r}", [], (baseline_format,)
    for i, config in enumerate(steps):
        method = _method(config, where)
        refused = [fmt for fmt in given if fmt not in method.accepts]
        if refused:
            before = f"step {i} ({steps[i - 1].method}) gives" if i else "the fine-tuned baseline is"
            raise ValueError(f"{where}: {config.method} takes {' or '.join(method.accepts)}, but {before} {' or '.join(refused)}")
        # Keyed by every option's value, defaults written out: two spellings of one step (`{method: layer_drop, keep_layers: 15}`
        # by hand, the search's `keep_layers: 15, epochs: 1.0`) are one cached step, built once.
        planned.append(Step(StepConfig(method=config.method, **method.options.model_dump(mode="json")), method))
        given = method.produces
    return planned


def instance(config: StepConfig) -> Method:
    """The method instance of one step's config (a step on a worker makes it again from the config it was sent)."""
    return get_method(config.method).from_config(config.options())


def _method(config: StepConfig, where: str) -> Method:
    try:
        get_method(config.method)
    except KeyError as exc:
        raise ValueError(f"{where}: {exc.args[0]}") from None
    try:
        return instance(config)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}, method {config.method!r}: {problems}") from None
