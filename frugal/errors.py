"""Errors a user can hit. Each names the problem and the fix in one message."""

from __future__ import annotations


class FrugalError(Exception):
    """A problem the user can fix (bad data, bad config, missing model)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  Fix: {fix}")


class ConfigError(FrugalError):
    """The configuration is invalid."""


class DataError(FrugalError):
    """The input data is missing or unusable."""


class ModelError(FrugalError):
    """The model cannot be found or loaded."""


class WorkerError(FrugalError):
    """A step sent to a work pool came back without a result: no deployment, no worker, a dead worker, a timeout."""


class ValidationFailed(DataError):
    """The Great Expectations suite failed on the prepared splits."""


class SkipVariant(Exception):
    """A compression method cannot run on this hardware; the variant is recorded as skipped."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
