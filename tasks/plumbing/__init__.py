"""The plumbing every stage shares: references, the stage decorator, MLflow tracking, the model store,
cache keys, locks and honest run states. (Where a step runs, locally or on a work pool, is tasks/dispatch.py.)"""
