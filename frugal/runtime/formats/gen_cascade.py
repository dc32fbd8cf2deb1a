"""A generative cascade: the cheap model answers when its mean token log-probability clears a threshold, else the strong one.

Model folder format ``causal-cascade``: ``cheap/`` and ``strong/`` (each a generative model folder of any format, with the
same vocabulary and end-of-sequence ids), ``tokenizer/`` (the cheap part's) and ``frugal.json`` (task "generate"; notes
hold ``chat`` and ``eos_token_ids`` as the parts', the ``threshold`` and how it was chosen; ml/generation/cascade.py).

Every request runs the cheap part to its end first: its mean log-probability is known only then. When it is >= the
threshold that answer is returned, else the strong part generates from the same prompt ids and its answer is returned.
Priced end to end: a deferred request's ``seconds`` and time to first token include the cheap attempt, while its token
counts are the answer's (what a client is billed and what $ per 1M output tokens divides by; counting the discarded
cheap tokens too would make the deferred requests look cheaper per token). ``CascadeGeneration`` adds which part answered
and the tokens both passes generated.

Streaming buffers the cheap answer (it may yet be discarded), then yields its tokens, or streams the strong part's: a
cascade's first token comes after the cheap part's whole answer. Imports only the runtime (no torch): a bundle serves a
cascade with its parts' runtimes alone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from frugal.runtime.formats.cascade import CHEAP, PARTS, STRONG
from frugal.runtime.generator import Generation, Generator, Message
from frugal.runtime.manifest import Manifest
from frugal.runtime.registry import Format, load_generator, register


@dataclass(frozen=True)
class CascadeGeneration(Generation):
    answered_by: str  # "cheap" or "strong"
    cheap_mean_logprob: float  # the cheap part's confidence, compared with the threshold
    generated_tokens: int  # both passes' new tokens when deferred (the compute), output_tokens is the answer's (the bill)


@dataclass(frozen=True)
class _Route:
    answered_by: str
    cheap_mean_logprob: float
    cheap_tokens: int


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
        self.calls = self.deferred = 0  # over every request since loading: measurement's deferral share
        self._lock = threading.Lock()
        self._last = threading.local()  # the route of this thread's last request (generate reads it back)

    def stream_ids(self, ids: list[int], max_new_tokens: int) -> Iterator[tuple[int, float]]:
        """The cheap part's tokens once it has finished and cleared the threshold, else the strong part's as they come."""
        cheap = self._until_eos(self.cheap.stream_ids(ids, max_new_tokens))
        confidence = mean_logprob(cheap)
        route = _Route(CHEAP if answers(confidence, self.threshold) else STRONG, confidence, len(cheap))
        with self._lock:
            self.calls += 1
            self.deferred += route.answered_by == STRONG
        self._last.route = route
        if route.answered_by == CHEAP:
            yield from cheap
        else:
            yield from self.strong.stream_ids(ids, max_new_tokens)

    def _until_eos(self, tokens: Iterator[tuple[int, float]]) -> list[tuple[int, float]]:
        """The tokens `stream` would show, end of sequence included: the ones Generation.mean_logprob averages."""
        out = []
        for token in tokens:
            out.append(token)
            if token[0] in self.eos_ids:
                break
        return out

    def generate(self, prompt: str | Sequence[Message], max_new_tokens: int) -> CascadeGeneration:
        """The answer, timed from the request to the last token of whichever part answered (the cheap attempt included)."""
        answer = super().generate(prompt, max_new_tokens)
        route: _Route = self._last.route
        extra = route.cheap_tokens if route.answered_by == STRONG else 0
        return CascadeGeneration(**asdict(answer), answered_by=route.answered_by, cheap_mean_logprob=route.cheap_mean_logprob,
                                 generated_tokens=answer.output_tokens + extra)  # fmt: skip

    def extra_metrics(self) -> dict[str, float]:
        """What measurement adds to a cascade's metrics: the share of requests the strong part answered, and the calibration's."""
        notes = self.manifest.notes
        figures = {"deferred_share": self.deferred / self.calls if self.calls else 0.0, "cascade_threshold": self.threshold}
        return figures | ({"deferred_share_val": float(notes["deferred_share_val"])} if "deferred_share_val" in notes else {})


register(Format("causal-cascade", "cheap/ and strong/ generative folders routed by the cheap part's mean log-prob (frugal's own)",
                CascadeGenerator, save=None, packages=(), standard=None,
                parts=lambda folder: [folder / part for part in PARTS]))  # fmt: skip
