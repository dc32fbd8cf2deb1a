"""The serving runtime: a leaf that predicts with any model folder, the same code in evaluation and in serving.

It imports numpy, tokenizers and the format's own runtime package (onnxruntime; torch only for the
torch formats), never anything above it (checked by the import contract, .importlinter), so a
bundle or a serving image carries it alone. Formats: frugal/runtime/formats/, one module each.
"""

from frugal.runtime.manifest import MANIFEST, TOKENIZER_DIR, Manifest
from frugal.runtime.predictor import Predictor, Tokenize, length_ordered
from frugal.runtime.registry import get_format, load_predictor

__all__ = ["MANIFEST", "TOKENIZER_DIR", "Manifest", "Predictor", "Tokenize", "get_format", "length_ordered", "load_predictor"]
