"""A generative model being served: the loaded version, and its tokens carried from the decoding thread to the event loop.

Generation is blocking CPU work, so it never runs on the event loop. Every generation of the server runs in one
thread (`Generations`): one at a time, so the model's `threads` are never split between two requests (on 2 cores two
at once would each run at about half speed, and the first would wait for the second's tokens). Others wait in its
queue without holding a thread. Tokens go from that thread to the request's coroutine through an asyncio queue, so a
streaming response sends each one as it comes; a client that goes away stops the generation at its next token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from frugal.runtime.generator import Generator, Message, Token
from frugal.serve.source import LoadedRelease, Release

log = logging.getLogger(__name__)
_DONE = object()


class Generating(LoadedRelease):
    """One loaded generative version (Manifest.task "generate"): the runtime's generator plus what the API reports."""

    cost_figure = "usd_per_1m_tokens"  # cost_usd(completion tokens)

    def __init__(self, release: Release, generator: Generator) -> None:
        super().__init__(release, generator.manifest)
        self.generator = generator

    @property
    def labels(self) -> list[str]:
        return []


@dataclass
class Output:
    """What a generation produced so far: its text, its token count, and why it ended."""

    eos_ids: set[int]
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    stopped: bool = False  # an end-of-sequence token came (else max_tokens ended it)

    def add(self, token: Token) -> None:
        self.tokens += 1
        self.stopped = token.id in self.eos_ids
        self.pieces.append(token.text)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def finish_reason(self) -> str:
        return "stop" if self.stopped else "length"


def budget(generator: Generator, prompt: str | Sequence[Message], asked: int | None, cap: int) -> tuple[int, int]:
    """(prompt tokens, max_tokens): the asked max_tokens, else what fits the context up to `cap`. PromptError when the
    prompt (with at least one new token, or with the asked max_tokens) does not fit, or chat needs a missing template."""
    if asked is None:
        prompt_tokens = len(generator.encode(prompt, 1))
        return prompt_tokens, min(cap, generator.context_length - prompt_tokens)
    return len(generator.encode(prompt, asked)), asked


class Generations:
    """The one thread that runs every generation, and the bridge from it to the event loop."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frugal-generate")

    def stop(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=False)  # the requests in flight finish (uvicorn waited for them)

    async def tokens(self, generator: Generator, prompt: str | Sequence[Message], max_tokens: int) -> AsyncIterator[Token]:
        """The generated tokens as the thread makes them. Leaving the loop early (a client gone) stops the generation."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        self._executor.submit(_run, generator, prompt, max_tokens, cancel, lambda item: _hand(loop, queue, item))
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            cancel.set()


def _run(generator: Generator, prompt: str | Sequence[Message], max_tokens: int, cancel: threading.Event, hand: Any) -> None:
    try:
        if cancel.is_set():  # its client left while it was queued
            return
        stream = generator.stream(prompt, max_tokens)
        try:
            for token in stream:
                hand(token)
                if cancel.is_set():
                    break
        finally:
            stream.close()  # a format's decoding thread stops at its next step (frugal/runtime/formats/causal.py)
    except Exception as exc:  # the request's coroutine raises it
        hand(exc)
    finally:
        hand(_DONE)


def _hand(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any], item: object) -> None:
    try:
        loop.call_soon_threadsafe(queue.put_nowait, item)
    except RuntimeError:  # the loop has closed (shutdown): nobody is reading any more
        log.debug("Dropped a token: the event loop is closed")
