"""The Flower App of federated fine-tuning (`frugal_fl`), run by Flower in its own environment (requirements/flower-lock.txt).

This folder is the app directory `flwr run` builds into a FAB: pyproject.toml names the ServerApp and ClientApp.
`frugal_fl` imports only flwr, torch, transformers, peft, numpy and pandas, never frugal's pipeline modules
(prefect, mlflow), which the Flower environment does not have. The pipeline imports `frugal_fl.partition` too, so
the rule that splits the rows across clients is checked before any process starts.
"""
