"""The compression methods, one module each, registered by name with `ml.compress.base.register` (discovered by ml.compress)."""
