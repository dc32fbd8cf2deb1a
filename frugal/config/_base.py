"""What every config section shares: strict, frozen models and project-relative paths."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from pydantic import BaseModel, ConfigDict, ValidationInfo


def relative_path(value: str) -> str:
    """A path frugal writes to must stay inside the project: relative, and no `..` out of it.

    (An absolute path could name any folder on the machine; preparing data renames and deletes it.)
    """
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or PureWindowsPath(value).drive:
        raise ValueError(f"{value!r} must be a path relative to the project folder, without '..' (frugal writes there)")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def unique(values: list[str], info: ValidationInfo) -> list[str]:
    """A list field without repeats (a repeated label or strategy would be counted twice)."""
    if len(set(values)) != len(values):
        raise ValueError(f"{info.field_name} must be unique")
    return values
