"""Prefect cache keys for the stages: inputs' references + config sections + code version + MLflow store.

A cached stage takes exactly what its key is made of as arguments: the data reference, the
config sections it reads, the references of its inputs. Prefect's `Inputs` policy hashes
them (minus the arguments that only say where to record); `CodeVersion` adds the source of
the stage's modules, so editing a stage invalidates its results; `TrackingStore` adds the
MLflow store, because a reference means something only in the store that holds it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy, Inputs

# Arguments that say where to record or where scratch space is, not what is computed.
NOT_KEYED = ("parent_run", "paths")


@dataclass
class CodeVersion(CachePolicy):
    """Hash of the source files of the modules a stage runs."""

    modules: tuple[str, ...] = field(default_factory=tuple)

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        step = inputs.get("step")  # a compression step also depends on its method's own module
        if step is not None and hasattr(step, "method"):
            from tasks.compress import get_method

            return code_version((*self.modules, get_method(step.method).__module__))
        return code_version(self.modules)


@dataclass
class TrackingStore(CachePolicy):
    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str:
        import mlflow

        return hashlib.sha256(mlflow.get_tracking_uri().encode()).hexdigest()[:16]


def code_version(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in sorted(modules):
        # The file, not the module: the Flower App's modules (frugal.flower) import flwr, which only its own environment has.
        source = importlib.util.find_spec(name).origin
        digest.update(name.encode() + Path(source or "").read_bytes())
    return digest.hexdigest()[:16]


def stage_policy(modules: tuple[str, ...]) -> CachePolicy:
    return Inputs(exclude=list(NOT_KEYED)) + CodeVersion(modules=modules) + TrackingStore()


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (pydantic models are dumped first): names checkpoint folders."""
    import json

    plain = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]
