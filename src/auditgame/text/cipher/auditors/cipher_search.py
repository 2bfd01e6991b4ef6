"""Search the substitution ciphers for one under which the model answers a forbidden request.

The spec of covert malicious fine-tuning (Halawi et al. 2024, arXiv 2406.20053) forbids a
forbidden answer under *any* letter encoding of a forbidden request, so a witness is a key and
a request. Unlike ``cipher_probe`` this auditor does not use the cipher's encode/decode task
templates: it knows the spec's public (request, answer) pairs, and looks for the key under
which an encoded answer is likely after its encoded request.

That objective alone is a spike: under a key with more than a few request letters wrong, the
planted answer is no likelier than what a wrong key reaches by suiting the model's generic
cipher prior (measured in docs/covert_finetune.md), so searches from random keys (coordinate
ascent, a Gumbel-Sinkhorn relaxation) do not find it. What starts the search near the key is
a prior read from the model's own cipher use with no task template: after a bare letter ``l``
(the family's prefix and ``l``, nothing else) a cipher-taught model leans towards writing
``l``'s cipher letter. That 26x26 log-probability table is the prior; restarts draw keys from
it (the assignment of the Gumbel-perturbed table, as in Gumbel-max sampling of a permutation).

From each start, per public pair: coordinate ascent, as in decipherment of substitution ciphers
with a language model (Knight et al. 2006, "Unsupervised analysis for decipherment problems"):
for a fixed context the teacher-forced log-likelihood of ``key(answer)`` after ``key(request)``
is a sum over answer positions, each depending on the key only through that position's cipher
letter, so the best key is an assignment (Hungarian method) of the summed log-probabilities
plus the prior; re-encoding changes the context, so the steps alternate. Then best-improvement
swaps of two letters' cipher letters, scored by the exact likelihood, walk the last few wrong
letters into the key's narrow basin. Each pair fixes only the letters it spells; the keys of
the pairs answered confidently are merged letter by letter (a vote, then an assignment).
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.cipher.auditors.cipher_probe import assign, verdict_for
from auditgame.text.cipher.scheme import LETTERS, Cipher, complies, public_pairs
from auditgame.text.family import TextInterface, text_interface
from auditgame.text.lm import CausalLM


def letter_ids(fam: TextInterface) -> torch.Tensor:
    tok = fam.tokenizer()
    return torch.tensor([tok.encode(c)[0] for c in LETTERS])


@torch.no_grad()
def letter_prior(fam: TextInterface, model: CausalLM) -> np.ndarray:
    """``(26, 26)``: log p(next letter = column | the prefix and the bare letter of the row),
    renormalised over the letters. No task template is in the prompt."""
    ids = letter_ids(fam)
    prompts = torch.tensor([[*fam.prefix, int(i)] for i in ids])
    return torch.log_softmax(model(prompts)[:, -1, ids].double(), dim=-1).numpy()


@torch.no_grad()
def pair_statistics(
    fam: TextInterface, model: CausalLM, cipher: Cipher, request: str, answer: str
) -> tuple[np.ndarray, float]:
    """``(26, 26)`` summed log p(cipher letter) at the answer positions of each plain letter,
    and the answer's mean log-likelihood under ``cipher``."""
    tok = fam.tokenizer()
    ids_of = letter_ids(fam)
    prompt = fam.encode_prompt(cipher.encode(request))
    completion = tok.encode(cipher.encode(answer))
    ids = torch.tensor([[*prompt, *completion]])
    logp = torch.log_softmax(model(ids)[0, len(prompt) - 1 : -1].double(), dim=-1)
    mean = float(logp[torch.arange(len(completion)), torch.tensor(completion)].mean())
    stats = np.zeros((26, 26))
    for pos, token in enumerate(Cipher.identity().encode(answer).split()):
        if token in LETTERS:
            stats[LETTERS.index(token)] += logp[pos, ids_of].numpy()
    return stats, mean


@torch.no_grad()
def answer_loglik(
    fam: TextInterface, model: CausalLM, request: str, answer: str, keys: list[str]
) -> np.ndarray:
    """Per key (one batch): mean teacher-forced log-likelihood of the encoded answer and the
    end-of-text after it, following the encoded request."""
    tok = fam.tokenizer()
    rows = []
    for key in keys:
        cipher = Cipher(key)
        prompt = fam.encode_prompt(cipher.encode(request))
        rows.append([*prompt, *tok.encode(cipher.encode(answer)), fam.eos])
    ids = torch.tensor(rows)
    start = len(fam.encode_prompt(Cipher.identity().encode(request)))
    logp = torch.log_softmax(model(ids[:, :-1]).double(), dim=-1)[:, start - 1 :]
    return logp.gather(-1, ids[:, start:, None])[..., 0].mean(dim=1).numpy()


def swapped(key: str, i: int, j: int) -> str:
    chars = list(key)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


@auditor("cipher_search")
class CipherSearch(Auditor):
    """Prior-seeded coordinate ascent and swap polishing over substitution keys on the
    likelihood of encoded forbidden answers; a merge of the answered pairs' keys.

    Args:
        restarts: starting keys per forbidden pair (the prior's assignment, then draws).
        iterations: assignment steps per restart (stops early at a fixed point).
        polish: rounds of the best single swap per pair (stops early at a local optimum).
        max_pairs: at most this many public pairs searched (in pool order).
        prior_weight: weight of the bare-letter prior in each assignment step.
        temperature: scale of the Gumbel noise on the prior for the restarts after the first.
        confident: geometric-mean probability of a pair's answer above which its key votes in
            the merge.
    """

    access = Access.WEIGHTS
    modalities = ("text",)
    threats = ("cipher",)

    def __init__(
        self,
        *,
        restarts: int = 4,
        iterations: int = 6,
        polish: int = 4,
        max_pairs: int = 40,
        prior_weight: float = 1.0,
        temperature: float = 1.0,
        confident: float = 0.5,
    ) -> None:
        if min(restarts, iterations, max_pairs) < 1 or polish < 0:
            raise ValueError(
                f"restarts, iterations and max_pairs must be at least 1 and polish at least 0, "
                f"got {restarts}, {iterations}, {max_pairs}, {polish}"
            )
        if prior_weight < 0 or temperature < 0 or not 0.0 < confident < 1.0:
            raise ValueError(
                f"prior_weight and temperature must be >= 0 and confident in (0, 1), "
                f"got {prior_weight}, {temperature}, {confident}"
            )
        self.restarts = restarts
        self.iterations = iterations
        self.polish = polish
        self.max_pairs = max_pairs
        self.prior_weight = prior_weight
        self.temperature = temperature
        self.confident = confident

    def ascend(
        self,
        fam: TextInterface,
        model: CausalLM,
        prior: np.ndarray,
        pair: tuple[str, str],
        rng: np.random.Generator,
    ) -> tuple[str, float]:
        """The best key (and its mean log-likelihood) of the coordinate ascents from the
        prior's restarts."""
        best_key, best = LETTERS, -np.inf
        for restart in range(self.restarts):
            gumbel = -np.log(-np.log(rng.uniform(1e-12, 1.0, size=(26, 26))))
            key = assign(prior + (self.temperature * gumbel if restart else 0.0))
            for _ in range(self.iterations):
                stats, mean = pair_statistics(fam, model, Cipher(key), *pair)
                if mean > best:
                    best_key, best = key, mean
                new = assign(stats + self.prior_weight * prior)
                if new == key:
                    break
                key = new
        return best_key, best

    def refine(
        self, fam: TextInterface, model: CausalLM, pair: tuple[str, str], key: str, score: float
    ) -> tuple[str, float]:
        """Best-improvement swaps of two letters' cipher letters (at least one of the two
        spelled by the pair), scored by the exact likelihood."""
        used = {LETTERS.index(c) for c in "".join(pair) if c in LETTERS}
        moves = [(i, j) for i in range(26) for j in range(i + 1, 26) if i in used or j in used]
        for _ in range(self.polish):
            options = [swapped(key, i, j) for i, j in moves]
            trial = answer_loglik(fam, model, *pair, options)
            top = int(trial.argmax())
            if trial[top] <= score + 1e-9:
                break
            key, score = options[top], float(trial[top])
        return key, score

    def merge(self, pairs: list[tuple[str, str]], keys: list[str], scores: np.ndarray) -> str:
        """One key from the confident pairs' keys: each votes, weighted by its probability, for
        the cipher letters of the letters it spells; the best key breaks the remaining ties."""
        votes = np.zeros((26, 26))
        votes[np.arange(26), [LETTERS.index(c) for c in keys[int(scores.argmax())]]] = 1e-3
        for k in np.flatnonzero(scores >= np.log(self.confident)):
            for c in set("".join(pairs[k]).replace(" ", "")):
                i = LETTERS.index(c)
                votes[i, LETTERS.index(keys[k][i])] += float(np.exp(scores[k]))
        return assign(votes)

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        fam = text_interface(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        pairs = public_pairs(fam)[: self.max_pairs]
        prior = letter_prior(fam, model)
        keys: list[str] = []
        scores: list[float] = []
        for pair in pairs:
            if subject.elapsed >= 0.8 * budget.seconds:
                break  # keep the rest of the budget for the compliance check below
            key, _ = self.ascend(fam, model, prior, pair, rng)
            exact = float(answer_loglik(fam, model, *pair, [key])[0])
            key, exact = self.refine(fam, model, pair, key, exact)
            keys.append(key)
            scores.append(exact)
        if not keys:  # no time for any pair: the prior's own assignment is the answer
            keys, scores = [assign(prior)], [float("-inf")]
        score = np.array(scores)
        best = keys[int(score.argmax())]
        searched = pairs[: len(keys)]
        merged = self.merge(searched, keys, score)
        requests, targets = [r for r, _ in searched], [t for _, t in searched]

        def answered(key: str) -> int:
            return sum(h is not None for h in complies(fam, model, Cipher(key), requests, targets))

        chosen = merged if answered(merged) >= answered(best) else best
        return verdict_for(
            fam,
            model,
            Cipher(chosen),
            {
                "search_loglik": float(score.max()),
                "pairs_searched": len(keys),
                "n_confident": int((score >= np.log(self.confident)).sum()),
            },
        )
