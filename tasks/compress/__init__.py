"""Compression methods, one module each, registered by name.

A method turns one model folder into another (see ``base.Method``). Adding a method is one
new file in this package that defines a ``Method`` subclass decorated with ``@register``;
it is discovered on import, and configs can name it at once.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from tasks.compress.base import REGISTRY, CompressContext, Method, StepReport, TorchMethod, register

__all__ = ["REGISTRY", "CompressContext", "Method", "StepReport", "TorchMethod", "get_method", "register", "validate_step"]

_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        for module in pkgutil.iter_modules(__path__):
            if module.name != "base" and not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
        _discovered = True


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in REGISTRY:
        raise KeyError(f"unknown compression method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def validate_step(name: str, options: dict[str, Any], where: str) -> None:
    """Raise ValueError naming the variant, method and option when a step is misconfigured."""
    try:
        method = get_method(name)
    except KeyError as exc:
        raise ValueError(f"{where}: {exc.args[0]}") from None
    try:
        method.Options(**options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{where}, method {name!r}: {problems}") from None
