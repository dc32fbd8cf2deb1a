"""The ClientApp: one SuperNode's client trains the LoRA adapters on its own rows and returns only them.

Its partition comes from the SuperNode's node config (`partition-id`, `num-partitions`). In this
single-machine setup every client reads the one train file the pipeline wrote and keeps its own rows
(`partition.rows_of`); in production each SuperNode would point at data only it holds.
"""

from __future__ import annotations

import os

import pandas as pd
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .partition import rows_of
from .task import Spec, adapter_state, load_model, set_adapter_state, train_local

app = ClientApp()

# Test hook (tests/test_federated.py): the clients of these partitions ("0", "0,1") die in round 1, as a machine would.
FAIL_PARTITION = "FRUGAL_FL_FAIL_PARTITION"


@app.train()
def train(msg: Message, context: Context) -> Message:
    spec = Spec.load(str(context.run_config["spec"]))
    client, clients = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    server_round = int(msg.content["config"]["server-round"])
    if str(client) in os.environ.get(FAIL_PARTITION, "").split(",") and server_round == 1:
        os._exit(17)  # no reply, no cleanup: what a crashed client looks like to the SuperNode
    rows = rows_of(pd.read_parquet(spec.train_file), client, clients, spec.partition_by, spec.seed)
    net, tokenizer = load_model(spec)
    set_adapter_state(net, msg.content["arrays"].to_torch_state_dict())
    loss = train_local(net, tokenizer, rows, spec, seed=spec.seed + 1000 * client + server_round)
    metrics = MetricRecord({"num-examples": len(rows), "train-loss": loss})  # FedAvg weighs each client by num-examples
    reply = RecordDict({"arrays": ArrayRecord(adapter_state(net)), "metrics": metrics})
    return Message(content=reply, reply_to=msg)
