"""Logging policy: a user error reads once, in words, and never as a traceback.

Prefect reports a failed stage four times on the console (the task failed, the task finished Failed,
the flow failed, the flow finished Failed), each quoting the error; for a FrugalError the CLI prints
the one message that names the problem and the fix, so the console shows none of those four. Prefect's
API log keeps them, and the MLflow run keeps the error (tag `error`, error.txt).
"""

from __future__ import annotations

import logging

from frugal.errors import FrugalError

_ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine")
_SEEN: set[str] = set()  # the first line of each user error Prefect reported: its later records quote it


class _DropUserErrorTraceback(logging.Filter):
    """Prefect logs every task failure with its traceback; for a FrugalError the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], FrugalError):
            _SEEN.add(record.exc_info[1].problem.splitlines()[0])
            record.exc_info = None
            record.exc_text = None
        return True


class _UserErrorOffConsole(logging.Filter):
    """On a console handler: drop Prefect's records of a FrugalError (the failure, and the "Finished in state Failed"
    lines that quote it), which the CLI prints once itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("prefect.") or not _SEEN:
            return True
        message = record.getMessage()
        return not any(first in message for first in _SEEN)


def quiet_user_errors() -> None:
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrorTraceback) for f in logger.filters):
            logger.addFilter(_DropUserErrorTraceback())
    for handler in logging.getLogger().handlers:  # Prefect's console handler sits on the root logger
        if isinstance(handler, logging.StreamHandler) and not any(isinstance(f, _UserErrorOffConsole) for f in handler.filters):
            handler.addFilter(_UserErrorOffConsole())
