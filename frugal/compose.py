"""How config files compose: ``extends:`` chains, deep merge, and ``key=value`` overrides.

Other configs name a base with ``extends:`` and override just what differs
(lightning-hydra style); this module returns the merged mapping, unvalidated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from frugal.errors import ConfigError
from frugal.paths import CONFIGS_DIR


def compose(name_or_path: str | Path, overrides: list[str]) -> dict[str, Any]:
    """The raw mapping of a config by name (configs/<name>.yaml) or path, its `extends` chain merged and overrides applied."""
    raw = _compose(_locate(name_or_path), seen=())
    for item in overrides:
        _apply_override(raw, item)
    return raw


def _locate(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    candidates = (
        [path] if path.suffix in (".yaml", ".yml") else [CONFIGS_DIR / f"{path}.yaml", CONFIGS_DIR / "experiments" / f"{path}.yaml"]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"Config {str(name_or_path)!r} not found (looked at {', '.join(map(str, candidates))}).",
        "Pass a config name from configs/ (e.g. default, smoke) or the path of a YAML file.",
    )


def _compose(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"Config {path} extends itself in a cycle.", "Remove the cycle from the `extends:` keys.")
    raw = read_yaml(path)
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base_path = path.parent / f"{base_name}.yaml" if (path.parent / f"{base_name}.yaml").is_file() else _locate(base_name)
    return _merge(_compose(base_path, seen + (path.resolve(),)), raw)


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}", "Fix the YAML syntax.") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of keys to values.", "Write the config as `key: value` lines.")
    return raw


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge mappings; `compress.variants` is replaced whole so an experiment lists exactly its variants."""
    merged = dict(base)
    for key, value in override.items():
        if key != "variants" and isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override {item!r} is not key=value.", "Write overrides like finetune.epochs=1.")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override {item!r}: {part!r} is not a section.", "Point the override at a leaf key.")
    node[leaf] = yaml.safe_load(value)
