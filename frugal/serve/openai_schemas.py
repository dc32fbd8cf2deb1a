"""The OpenAI-compatible request bodies (/v1/chat/completions, /v1/completions) and the objects answered.

What OpenAI's clients send is accepted as they send it. Decoding is greedy, so the sampling settings (temperature,
top_p, penalties, seed) are accepted and have no effect: the answer is the one temperature 0 gives (docs/serving.md).
What frugal cannot do (several choices, stop sequences, log-probabilities, tools) is a 422 naming the field: an unknown
field is refused rather than silently ignored.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from frugal.runtime.generator import Message


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = Field(False, description="A last chunk (empty choices) with the request's usage.")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Any name: the server serves one model (the response names it).")
    max_tokens: int | None = Field(None, ge=1, description="New tokens at most (default: what fits the context, up to the "
                                   "server's max_tokens); more than the server's max_tokens is 422.")  # fmt: skip
    max_completion_tokens: int | None = Field(None, ge=1, description="OpenAI's newer name for max_tokens (wins over it).")
    stream: bool = Field(False, description="Server-sent events: a chunk per token piece, then `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    n: Literal[1] = Field(1, description="One choice: greedy decoding gives the same answer every time.")
    # Accepted, no effect: decoding is greedy (what evaluation measured), the answer temperature 0 gives.
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    user: str | None = None

    @property
    def asked_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")  # name, tool_call_id ...: the chat template sees role and content only

    role: str = Field(description="system, user or assistant (the model's chat template decides which it accepts).")
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation; the model answers the last turn.")

    def conversation(self) -> list[Message]:
        return [{"role": m.role, "content": m.text} for m in self.messages]

    def prompt_text(self) -> str:
        """What feedback keeps as this request's prompt: the last user turn (the prompt of a prompt/response pair)."""
        users = [m.text for m in self.messages if m.role == "user"]
        return users[-1] if users else self.messages[-1].text


class CompletionRequest(_Request):
    prompt: str | list[str] = Field(description="The prompt (a list holds exactly one).")

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


class Shapes:
    """The objects of one answer: the whole one, or its stream's chunks (OpenAI's field names and order)."""

    def __init__(self, chat: bool, request_id: str, model: str) -> None:
        self.chat, self.model, self.created = chat, model, int(time.time())
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def _choice(self, text: str | None, finish_reason: str | None, delta: bool) -> dict[str, Any]:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        if delta:
            return {"index": 0, "delta": {"content": text} if text is not None else {}, "logprobs": None, "finish_reason": finish_reason}
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}

    def whole(self, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        head = self._head("chat.completion" if self.chat else "text_completion")
        return {**head, "choices": [self._choice(text, finish_reason, delta=False)], "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **self._head("chat.completion.chunk" if self.chat else "text_completion"),
            "choices": [self._choice(text, finish_reason, True)],
        }

    def first(self) -> dict[str, Any]:
        """A chat stream opens with the assistant's role (OpenAI's first chunk); a completion stream with its first piece."""
        chunk = self.chunk("")
        chunk["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return chunk

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        """stream_options.include_usage: the last chunk before [DONE], with no choices."""
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
