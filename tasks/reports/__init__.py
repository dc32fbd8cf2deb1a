"""What the CLI reads back from MLflow: `frugal compare` and `frugal reproduce`'s comparison."""
