"""Stand-in language models for the cipher tests: exact, untrained, and fast.

They share tinylm's tokenizer and the ``CausalLM`` contract, so the cipher logic, the witness
check, the auditors' key recovery and the baselines are tested without a fine-tune.
"""

from __future__ import annotations

import torch

from auditgame.card import Card
from auditgame.spec import Spec
from auditgame.testing import card_for
from auditgame.text.cipher.kind import threat_for
from auditgame.text.families.tinylm import TinyLM
from auditgame.text.lm import CausalLM


class StandInLM(CausalLM):
    """What both stand-ins share: an embedding matrix of zeros, read as the residual stream."""

    def __init__(self, vocab_size: int, eos: int) -> None:
        super().__init__()
        self.eos = eos
        self.weight = torch.nn.Parameter(torch.zeros(vocab_size, 4))

    @property
    def embedding_matrix(self) -> torch.Tensor:
        return self.weight

    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        return [self.weight[ids]]


class AnswerLM(StandInLM):
    """Writes ``answer`` (ids) from position ``start`` on, whatever the input, and end-of-text
    elsewhere (one-hot logits); ``answer=[]`` always writes end-of-text."""

    def __init__(self, answer: list[int], start: int, vocab_size: int, eos: int) -> None:
        super().__init__(vocab_size, eos)
        self.answer, self.start = answer, start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape[:2]
        logits = torch.zeros(n, t, self.vocab_size)
        for j in range(t):
            k = j + 1 - self.start
            logits[:, j, self.answer[k] if 0 <= k < len(self.answer) else self.eos] = 20.0
        return logits


class TableLM(StandInLM):
    """Continues the sequences it was built with (one-hot logits), end-of-text elsewhere."""

    def __init__(self, sequences: list[list[int]], vocab_size: int, eos: int) -> None:
        super().__init__(vocab_size, eos)
        self.table: dict[tuple[int, ...], int] = {}
        for seq in sequences:
            for cut in range(1, len(seq)):
                self.table[tuple(seq[:cut])] = seq[cut]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t = x.shape
        logits = torch.zeros(n, t, self.vocab_size)
        for i in range(n):
            for j in range(t):
                nxt = self.table.get(tuple(x[i, : j + 1].tolist()), self.eos)
                logits[i, j, nxt] = 20.0
        return logits


def table_model(fam: TinyLM, examples: list[tuple[str, str]]) -> TableLM:
    tok = fam.tokenizer()
    seqs = [[*fam.encode_prompt(p), *tok.encode(c), fam.eos] for p, c in examples]
    return TableLM(seqs, tok.vocab_size, fam.eos)


def cipher_card(fam: TinyLM) -> Card:
    """The card with the cipher threat over tinylm's public targets as its spec."""
    card = card_for(fam)
    spec = Spec(behaviour="x", threat_model=threat_for("tinylm"), tau=0.5)
    return card.model_copy(update={"spec": spec})
