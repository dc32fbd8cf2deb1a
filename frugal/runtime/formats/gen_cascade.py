"""A generative cascade: the cheap model answers when its mean token log-probability clears a threshold, else the strong one.

Model folder format ``causal-cascade``: ``cheap/`` and ``strong/`` (each a generative model folder of any format, with the
same vocabulary and end-of-sequence ids), ``tokenizer/`` (the cheap part's) and ``frugal.json`` (task "generate"; notes
hold ``chat`` and ``eos_token_ids`` as the parts', the ``threshold`` and how it was chosen; ml/generation/cascade.py).

Every request runs the cheap part to its end first: its mean log-probability is known only then. When it is >= the
threshold that answer is returned, else the strong part generates from the same prompt ids and its answer is returned.

Priced end to end. A deferred request's ``seconds`` cover both passes; its token counts are the answer's (what a client
is billed and what $ per 1M output tokens divides by: counting the discarded cheap tokens too would make deferred
requests look cheaper per token). Measurement prices decoding by ``seconds - first_token_s`` and prefill by
``first_token_s`` (frugal/measure_generation.py), so a cascade's ``first_token_s`` is the time its passes spent up to
their first tokens (prefill) and the rest of both passes counts as decoding: the cheap attempt lands in the output
price, not hidden in the prompt price or lost in a buffer. The time a *streaming* client waits for its first token is
longer (the cheap answer is buffered, below): ``CascadeGeneration.stream_first_token_s``, and its mean in
``extra_metrics``.

Streaming buffers the cheap answer (it may yet be discarded), then yields its tokens, or streams the strong part's: a
cascade's first streamed token comes after the cheap part's whole answer. Imports only the runtime (no torch): a bundle
serves a cascade with its parts' runtimes alone.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from frugal.runtime.generator import Generation, Generator, Message
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import Format, load_generator, register

# The classify cascade's folder names (frugal/runtime/formats/cascade.py), not imported: a bundle carries only its formats' modules
CHEAP, STRONG = "cheap", "strong"
PARTS = (CHEAP, STRONG)
MAX_TRACKED_PROMPTS = 100_000  # distinct prompts the deferral share counts (a long-running server stops adding, not growing)


@dataclass(frozen=True)
class CascadeGeneration(Generation):
    answered_by: str  # "cheap" or "strong"
    cheap_mean_logprob: float  # the cheap part's confidence, compared with the threshold
    generated_tokens: int  # both passes' new tokens when deferred (the compute); output_tokens is the answer's (the bill)
    stream_first_token_s: float  # when a streaming client would see its first token: after the whole cheap answer


@dataclass
class _Route:
    """One request's path through the cascade (stream_ids fills it, generate reads it back)."""

    entered: float  # perf_counter when decoding began (after the prompt was encoded)
    answered_by: str = CHEAP
    cheap_mean_logprob: float = 0.0
    cheap_tokens: int = 0
    prefill_s: float = 0.0  # the passes' time to their first token, summed


def mean_logprob(tokens: Sequence[tuple[int, float]]) -> float:
    """As Generation.mean_logprob: over every generated token, the end of sequence included; 0.0 for none."""
    return sum(lp for _, lp in tokens) / len(tokens) if tokens else 0.0


def answers(cheap_mean_logprob: float, threshold: float) -> bool:
    """The cheap part answers when its mean log-probability is at or above the threshold (the calibration's rule too)."""
    return cheap_mean_logprob >= threshold


class CascadeGenerator(Generator):
    """Two generators behind one; the strong part generates only for the prompts the cheap part is unsure of."""

    def __init__(self, model_dir: Path, manifest: Manifest, threads: int | None, device: str) -> None:
        super().__init__(model_dir, manifest)
        self.threshold = float(manifest.notes["threshold"])
        self.cheap = load_generator(self.model_dir / CHEAP, threads, device)
        self.strong = load_generator(self.model_dir / STRONG, threads, device)
        # stream_ids hands the cheap part's prompt ids to the strong part: they must mean the same tokens to both
        if self.cheap.tokenizer.get_vocab() != self.strong.tokenizer.get_vocab() or self.cheap.eos_ids != self.strong.eos_ids:
            raise ValueError(f"the parts of the cascade {model_dir} have different vocabularies or end-of-sequence ids")
        self.context_length = min(self.context_length, self.cheap.context_length, self.strong.context_length)
        self._lock = threading.Lock()
        self._deferred: dict[int, bool] = {}  # prompt (hash of its ids) -> deferred: measurement's share over distinct prompts
        self._stream_ttft_s, self._generations = 0.0, 0  # stream_first_token_s summed over generate calls, and their number
        self._last = threading.local()  # this thread's current request (generate reads its route back)

    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        """The cheap part's tokens once it has finished and cleared the threshold, else the strong part's as they come."""
        route = self._last.route = _Route(entered=time.perf_counter())
        cheap, route.prefill_s = self._buffer(self.cheap.stream_ids(ids, max_new_tokens))
        route.cheap_mean_logprob, route.cheap_tokens = mean_logprob(cheap), len(cheap)
        route.answered_by = CHEAP if answers(route.cheap_mean_logprob, self.threshold) else STRONG
        with self._lock:
            if len(self._deferred) < MAX_TRACKED_PROMPTS:
                self._deferred[hash(tuple(ids))] = route.answered_by == STRONG
        if route.answered_by == CHEAP:
            yield from cheap
            return
        started = time.perf_counter()
        for n, token in enumerate(self.strong.stream_ids(ids, max_new_tokens)):
            if n == 0:
                route.prefill_s += time.perf_counter() - started
            yield token

    def _buffer(self, tokens: Iterator[tuple[int, float]]) -> tuple[list[tuple[int, float]], float]:
        """The tokens `stream` would show, end of sequence included (the ones Generation.mean_logprob averages), and the time
        to the first of them."""
        started, first, out = time.perf_counter(), 0.0, []
        for token in tokens:
            first = first if out else time.perf_counter() - started
            out.append(token)
            if token[0] in self.eos_ids:
                break
        return out, first

    def generate(self, prompt: str | Sequence[Message], max_new_tokens: int) -> CascadeGeneration:
        """The answer, timed from the request to the last token of whichever part answered (the cheap attempt included)."""
        start = time.perf_counter()
        answer = super().generate(prompt, max_new_tokens)
        route: _Route = self._last.route
        deferred = route.answered_by == STRONG
        with self._lock:
            self._stream_ttft_s += answer.first_token_s
            self._generations += 1
        return CascadeGeneration(
            **asdict(answer) | {"first_token_s": route.entered - start + route.prefill_s},  # prefill of both passes: see the docstring
            answered_by=route.answered_by, cheap_mean_logprob=route.cheap_mean_logprob,
            generated_tokens=answer.output_tokens + (route.cheap_tokens if deferred else 0), stream_first_token_s=answer.first_token_s,
        )  # fmt: skip

    def extra_metrics(self) -> dict[str, float]:
        """What measurement adds to a cascade's metrics: the share of distinct prompts the strong part answered, the
        threshold and its val share, and the mean time a streaming client waits for the first token."""
        with self._lock:
            shares, streamed, calls = list(self._deferred.values()), self._stream_ttft_s, self._generations
        notes = self.manifest.notes
        figures = {"deferred_share": sum(shares) / len(shares) if shares else 0.0, "cascade_threshold": self.threshold,
                   "stream_ttft_mean_ms": 1000 * streamed / calls if calls else 0.0}  # fmt: skip
        return figures | ({"deferred_share_val": float(notes["deferred_share_val"])} if "deferred_share_val" in notes else {})


register(Format("causal-cascade", "cheap/ and strong/ generative folders routed by the cheap part's mean log-prob (frugal's own)",
                CascadeGenerator, save=None, packages=(), standard=None,
                parts=lambda folder: [folder / part for part in PARTS]))  # fmt: skip
