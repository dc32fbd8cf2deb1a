"""Which training rows each client holds: shards by a column's values, or seeded stratified shards.

Both sides use this module: each ClientApp keeps only its own rows, and the pipeline checks the rule
before starting any process (`problem`). Only pandas and numpy here: it runs in both environments.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def problem(frame: pd.DataFrame, clients: int, column: str | None, label_column: str = "label") -> str | None:
    """Why `frame` cannot be split across `clients` by this rule (every client needs rows of every class it could see), or None."""
    if column is None:
        counts = frame[label_column].value_counts()
        scarce = counts[counts < clients]
        if len(scarce):
            listed = ", ".join(f"{label!r} has {n}" for label, n in scarce.items())
            return (f"federated fine-tuning splits each class across {clients} clients, but some classes have fewer "
                    f"training rows than clients ({listed}): a client would hold no row of that class")  # fmt: skip
        return None
    if column not in frame.columns:
        return f"finetune.federated.partition_by={column!r} is not a column of the train split (it has: {', '.join(frame.columns)})"
    distinct = frame[column].nunique(dropna=False)
    if distinct < clients:
        return (f"finetune.federated.partition_by={column!r} has {distinct} distinct values in the train split, fewer than "
                f"{clients} clients: a client would hold no rows")
    return None


def assign(frame: pd.DataFrame, clients: int, column: str | None, seed: int, label_column: str = "label") -> np.ndarray:
    """The client index of every row of `frame`.

    By column: the sorted distinct values go round-robin to the clients (value i -> client i mod N), so each
    client holds whole groups, as a real federation (one client per hospital, shop, ...) would. Without one:
    each class's rows are shuffled with `seed` and dealt round-robin, so every shard has the same class mix.
    """
    owner = np.empty(len(frame), dtype=np.int64)
    if column is not None:
        values = sorted(frame[column].astype(str).unique())
        index = {value: i % clients for i, value in enumerate(values)}
        return frame[column].astype(str).map(index).to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    dealt = 0  # continue the deal across classes, so shard sizes differ by at most one
    labels = frame[label_column].to_numpy()
    for label in sorted(pd.unique(labels).tolist(), key=str):
        rows = rng.permutation(np.flatnonzero(labels == label))
        owner[rows] = (np.arange(len(rows)) + dealt) % clients
        dealt += len(rows)
    return owner


def rows_of(frame: pd.DataFrame, client: int, clients: int, column: str | None, seed: int) -> pd.DataFrame:
    """The rows client `client` of `clients` holds."""
    return frame[assign(frame, clients, column, seed) == client].reset_index(drop=True)
