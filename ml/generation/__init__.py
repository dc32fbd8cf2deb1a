"""task: generate: prompt/response data, causal LMs, their fine-tuning and quality (docs/generation.md)."""
