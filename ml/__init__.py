"""The ML library: data, training, modeling and model families, every compression method, cheap learners.

Plain typed functions and classes: no Prefect and no MLflow (checked by the import contract,
.importlinter), so tests and notebooks call them directly. The stages in tasks/ run them and record
what they did.
"""
