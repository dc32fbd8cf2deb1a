"""The ServerApp: FedAvg over the clients' adapters, val macro-F1 after every round, bytes on the wire counted.

Evaluation is server-side (the val split, which the clients never see), so every round is scored on the
same rows as the centralised fine-tune. A client that fails or dies mid-round is left out of that
round's average, which completes with the others' adapters; later rounds sample from the SuperNodes
still connected. A round in which no client replies fails the run. Results go to `spec.out_dir`:
`adapter.safetensors` (the averaged adapter state of the round with the best val macro-F1) and
`rounds.json`, or `error.json` when the run fails.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Iterable
from logging import INFO
from pathlib import Path
from time import sleep
from typing import Any

import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from .task import BestRound, Clock, Spec, adapter_state, load_model, macro_f1, payload, set_adapter_state, tensor_bytes, write_json

app = ServerApp()


class MeteredFedAvg(FedAvg):
    """FedAvg weighted by examples, sampling `clients_per_round` of the connected SuperNodes, recording each round's payloads."""

    def __init__(self, spec: Spec, full_model_bytes: int) -> None:
        super().__init__(fraction_evaluate=0.0, min_available_nodes=spec.clients, min_train_nodes=spec.clients_per_round)
        self.spec, self.full_model_bytes = spec, full_model_bytes
        self.rounds: dict[int, dict[str, Any]] = {}
        self.rng = random.Random(spec.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        nodes = self._nodes(grid, wait_for_all=server_round == 1)
        chosen = sorted(self.rng.sample(nodes, min(self.spec.clients_per_round, len(nodes))))
        config["server-round"] = server_round
        sent = payload(arrays)
        self.rounds[server_round] = {"round": server_round, "clients": len(chosen), "sent": sent,
                                     "bytes_sent": sent["wire_bytes"] * len(chosen)}  # fmt: skip
        log(INFO, "round %d: %d of %d clients, %d bytes to each", server_round, len(chosen), len(nodes), sent["wire_bytes"])
        return self._construct_messages(RecordDict({"arrays": arrays, "config": config}), chosen, MessageType.TRAIN)

    def _nodes(self, grid: Grid, wait_for_all: bool) -> list[int]:
        """Round 1 waits for every SuperNode the pipeline started; later rounds use whoever is still connected."""
        clock = Clock()
        while len(nodes := sorted(grid.get_node_ids())) < (self.spec.clients if wait_for_all else 1):
            if clock.seconds() > self.spec.round_timeout_seconds:
                raise RuntimeError(f"{len(nodes)} of {self.spec.clients} SuperNodes connected in {self.spec.round_timeout_seconds} s")
            sleep(0.5)
        return nodes

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good = [m for m in replies if not m.has_error()]
        failed = [f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()]
        row = self.rounds[server_round]
        row["failed"] = failed + [f"{row['clients'] - len(replies)} client(s) never replied"] * (len(replies) < row["clients"])
        if not good:
            raise RuntimeError(f"round {server_round}: no client returned its adapters ({'; '.join(row['failed']) or 'no replies'})")
        received = [payload(m.content["arrays"]) for m in good]
        row.update(replies=received, replied=len(good), bytes_received=sum(p["wire_bytes"] for p in received),
                   examples=[int(m.content["metrics"]["num-examples"]) for m in good])  # fmt: skip
        row["bytes_on_wire"] = row["bytes_sent"] + row["bytes_received"]
        # A full-model exchange would send the whole state dict to each client and back from each that replied.
        row["bytes_full_model"] = self.full_model_bytes * (row["clients"] + len(good))
        return super().aggregate_train(server_round, good)


@app.main()
def main(grid: Grid, context: Context) -> None:
    spec = Spec.load(str(context.run_config["spec"]))
    out = Path(spec.out_dir)
    try:
        run(grid, spec, out)
    except BaseException as exc:
        write_json(out / "error.json", {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        raise


def run(grid: Grid, spec: Spec, out: Path) -> None:
    clock = Clock()
    net, tokenizer = load_model(spec)
    val = pd.read_parquet(spec.val_file)
    full_bytes = tensor_bytes(net.get_base_model().state_dict())
    strategy = MeteredFedAvg(spec, full_bytes)
    scores: dict[int, dict[str, float]] = {}

    best = BestRound()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        state = arrays.to_torch_state_dict()
        set_adapter_state(net, state)
        scores[server_round] = {"val_macro_f1": macro_f1(net, tokenizer, val, spec), "seconds": clock.seconds()}
        best.offer(server_round, scores[server_round]["val_macro_f1"], state)
        log(INFO, "round %d: val macro-F1 %.4f", server_round, scores[server_round]["val_macro_f1"])
        return MetricRecord({"val-macro-f1": scores[server_round]["val_macro_f1"]})

    initial = ArrayRecord(adapter_state(net))
    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=spec.rounds, timeout=spec.round_timeout_seconds,
                            evaluate_fn=evaluate)  # fmt: skip
    from safetensors.torch import save_file

    save_file(best.state if best.state is not None else result.arrays.to_torch_state_dict(), out / "adapter.safetensors")
    rounds = [{**strategy.rounds[r], **scores[r]} for r in sorted(strategy.rounds)]
    write_json(out / "rounds.json", {"rounds": rounds, "best_round": best.round, "initial": scores.get(0), "full_model_bytes": full_bytes,
                                     "adapter_keys": initial.keys() and sorted(initial.keys()), "seconds": clock.seconds()})  # fmt: skip
