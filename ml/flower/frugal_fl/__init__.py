"""frugal's Flower App: LoRA adapters trained on each client's own rows, averaged by FedAvg on the server."""
