"""Compression methods, one module each in ml/compress/methods/, registered by name.

A method turns one model folder into another (``base.Method``): it declares its typed options,
the formats it accepts and produces, and whether it trains (``heavy``). Adding a method is one new
module in ml/compress/methods/ with a ``Method`` subclass decorated with ``@register``; it is
discovered on first use. ``plan`` (ml/compress/plan.py) turns a config's chains into method
instances once and checks them.
"""

from __future__ import annotations

import importlib
import pkgutil

from ml.compress.base import REGISTRY, CompressContext, Method, StepReport, TorchMethod, register

__all__ = ["REGISTRY", "CompressContext", "Method", "StepReport", "TorchMethod", "get_method", "method_module", "register"]

# Discovered, not imported by name: code that runs "some method" runs these (frugal/codegraph.py).
CODE_DEPS = ("ml.compress.methods",)
METHODS_PACKAGE = "ml.compress.methods"
_discovered = False


def _discover() -> None:
    global _discovered
    if not _discovered:
        package = importlib.import_module(METHODS_PACKAGE)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{METHODS_PACKAGE}.{module.name}")
        _discovered = True


def get_method(name: str) -> type[Method]:
    _discover()
    if name not in REGISTRY:
        raise KeyError(f"unknown compression method {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def method_module(name: str) -> str:
    """The module that defines method `name`: the code a step of it runs besides the stage's."""
    return get_method(name).__module__
