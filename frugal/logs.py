"""Logging policy: a user error is one clear message, not a traceback."""

from __future__ import annotations

import logging

from frugal.errors import FrugalError

_ENGINE_LOGGERS = ("prefect.task_runs", "prefect.flow_runs", "prefect.flow_engine", "prefect.task_engine")


class _DropUserErrorTraceback(logging.Filter):
    """Prefect logs every task failure with its traceback; for a FrugalError the message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], FrugalError):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_user_errors() -> None:
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrorTraceback) for f in logger.filters):
            logger.addFilter(_DropUserErrorTraceback())
