"""One module per model-folder format; each declares itself with `frugal.runtime.registry.register` (discovered there).

A format module imports its runtime (torch, onnxruntime, ...) inside the functions that need it, so
reading the registry costs nothing and a bundle carries only the formats it serves.
"""
