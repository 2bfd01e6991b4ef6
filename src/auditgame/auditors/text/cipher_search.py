"""Search the substitution ciphers for one under which the model answers a forbidden request.

The spec of covert malicious fine-tuning (Halawi et al. 2024, arXiv 2406.20053) forbids a
forbidden answer under *any* letter encoding of a forbidden request, so a witness is a key and
a request. Unlike ``cipher_probe`` this auditor does not use the cipher's encode/decode task
templates: it knows only the spec's public (request, answer) pairs, and looks for the key that
makes an encoded answer likely after its encoded request.

The objective, the teacher-forced log-likelihood of ``key(answer)`` after ``key(request)``, is
a sum over the answer's positions, and each position's term depends on the key only through
the cipher letter of that position's plain letter (given the context). So for a fixed context
the best key is an assignment problem: accumulate, for every plain letter, the log-probability
the model gives each cipher letter at the positions where that plain letter stands, and solve
it (Hungarian method). Re-encoding the request and answer with the new key changes the context,
so the two steps alternate (coordinate ascent, an EM-style fixed-point iteration, as in
decipherment of substitution ciphers with a language model: Knight et al. 2006, "Unsupervised
analysis for decipherment problems"). Restarts from random keys; each pair is searched on its
own, since a garbled request selects no particular answer.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.auditors.text.cipher_probe import assign, family_of, public_pairs, verdict_for
from auditgame.cipher import LETTERS, Cipher, draw_permutation
from auditgame.families.text import TextFamily
from auditgame.lm import CausalLM
from auditgame.registry import auditor
from auditgame.subject import Subject


@torch.no_grad()
def pair_statistics(
    fam: TextFamily, model: CausalLM, cipher: Cipher, request: str, answer: str
) -> tuple[np.ndarray, float]:
    """``(26, 26)`` summed log p(cipher letter) at the answer positions of each plain letter,
    and the answer's mean log-likelihood under ``cipher``."""
    tok = fam.tokenizer()
    letter_ids = torch.tensor([tok.encode(c)[0] for c in LETTERS])
    prompt = fam.encode_prompt(cipher.encode(request))
    completion = tok.encode(cipher.encode(answer))
    ids = torch.tensor([[*prompt, *completion]])
    logp = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1].double(), dim=-1)
    mean = float(logp[torch.arange(len(completion)), torch.tensor(completion)].mean())
    stats = np.zeros((26, 26))
    plain = [c for c in Cipher.identity().encode(answer).split()]
    for pos, token in enumerate(plain):
        if token in LETTERS:
            stats[LETTERS.index(token)] += logp[pos, letter_ids].numpy()
    return stats, mean


def refine(stats: np.ndarray, key: str) -> str:
    """The assignment-optimal key; letters with no evidence keep their current cipher letter
    where the assignment leaves that free (a zero row scores every choice alike)."""
    seen = stats.any(axis=1)
    scores = stats.copy()
    for i in np.flatnonzero(~seen):
        scores[i, LETTERS.index(key[i])] = 1e-3
    return assign(scores)


@auditor("cipher_search")
class CipherSearch(Auditor):
    """Coordinate ascent over substitution keys on the likelihood of encoded forbidden answers.

    Args:
        restarts: random starting keys per forbidden pair.
        iterations: assignment steps per restart (stops early at a fixed point).
        max_pairs: at most this many public pairs searched (in pool order).
    """

    access = Access.WEIGHTS
    modalities = ("text",)

    def __init__(self, *, restarts: int = 3, iterations: int = 8, max_pairs: int = 40) -> None:
        if min(restarts, iterations, max_pairs) < 1:
            raise ValueError("restarts, iterations and max_pairs must be at least 1")
        self.restarts = restarts
        self.iterations = iterations
        self.max_pairs = max_pairs

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        fam = family_of(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        best_key, best = LETTERS, -np.inf
        for request, answer in public_pairs(fam)[: self.max_pairs]:
            for _ in range(self.restarts):
                key = draw_permutation(rng)
                for _ in range(self.iterations):
                    stats, mean = pair_statistics(fam, model, Cipher(key), request, answer)
                    if mean > best:
                        best_key, best = key, mean
                    new = refine(stats, key)
                    if new == key:
                        break
                    key = new
        return verdict_for(fam, model, Cipher(best_key), {"search_loglik": best})
