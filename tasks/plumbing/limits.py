"""Prefect global concurrency limits frugal relies on: created when missing, by whichever process needs one first.

`frugal-promotion` (tasks/register.py) and `frugal-measure` (tasks/plumbing/measure_slot.py); `frugal deploy`
creates both so they show in the Prefect UI before the first run.
"""

from __future__ import annotations


def ensure_limit(name: str, slots: int = 1) -> bool:
    """Create the global concurrency limit `name` with `slots` slots unless it exists; True when it was created."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return False
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
                return True
            except ObjectAlreadyExists:  # another process created it meanwhile
                return False
