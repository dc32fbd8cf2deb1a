"""Prefect cache keys for the stages: inputs by content + config sections + code version + MLflow store.

A cached stage takes exactly what its key is made of as arguments: the data reference, the
config sections it reads, the references of its inputs. Prefect's `Inputs` policy hashes them
(minus the arguments that only say where to record, and with a data reference reduced to its
content hash: where a version was recorded never enters a key); `CodeVersion` adds the source of
every project module the stage can run (frugal/codegraph.py), so editing a module invalidates
exactly the stages that run it; `TrackingStore` adds the MLflow store, because a model reference
means something only in the store that holds it. A measurement adds `MeasuringMachine`: its figures
belong to the machine that measured them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy, Inputs

from frugal.codegraph import code_version
from frugal.hardware import machine_fingerprint

# Arguments that say where to record or where scratch space is, not what is computed.
NOT_KEYED = ("parent_run", "paths")
# What a stage runs besides its module's closure, read from its inputs: (more modules, CODE_DEPS not to follow).
CodeOf = Callable[[dict[str, Any]], tuple[tuple[str, ...], tuple[str, ...]]]


@dataclass
class CodeVersion(CachePolicy):
    """Hash of the code a stage runs: its module's import closure, plus what `code_of` reads from its inputs."""

    module: str = ""
    code_of: CodeOf | None = None

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        more, skip = self.code_of(inputs) if self.code_of else ((), ())
        return code_version((self.module, *more), skip=skip)


@dataclass
class DataContent(CachePolicy):
    """The data reference's content hash (its DVC md5): the same splits give the same key, whichever run logged them."""

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        data = inputs.get("data")
        return "" if data is None else hashlib.sha256(data.md5.encode()).hexdigest()[:16]


@dataclass
class TrackingStore(CachePolicy):
    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        import mlflow

        return hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:16]


@dataclass
class MeasuringMachine(CachePolicy):
    """The fingerprint of the machine the stage runs on (frugal/hardware.py), with its `evaluate_cfg`'s threads.

    A measurement is reused only where it was made: on another machine the same inputs are measured
    again, so the figures a decision compares come from one machine (docs/measurement.md).
    """

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        return machine_fingerprint(inputs["evaluate_cfg"].threads)["machine_fingerprint"]


def stage_policy(module: str, code_of: CodeOf | None = None, also: CachePolicy | None = None) -> CachePolicy:
    policy = Inputs(exclude=[*NOT_KEYED, "data"]) + DataContent() + CodeVersion(module=module, code_of=code_of) + TrackingStore()
    return policy + also if also is not None else policy
