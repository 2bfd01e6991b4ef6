"""``token_search``: a GCG-style discrete gradient search for inputs the model gets wrong.

Greedy Coordinate Gradient (Zou et al. 2023) adapted to max-of-K: each of ``restarts`` random
inputs is scored by how far its best wrong logit beats the logit of its true maximum,
``logsumexp_{j != max(x)} logit_j - logit_{max(x)}``. The gradient of that score with respect
to the one-hot input ranks, per position, the ``top_k`` token swaps most likely to raise it;
``candidates`` single swaps are drawn from them for each input, all are evaluated exactly, and
each input moves to its best candidate. Every evaluated input the model gets wrong is kept.

The counterexamples are summarised as patterns (``tokens.count_patterns``); the most frequent
ones are then *verified* by writing each into ``verify_samples`` random inputs and measuring
how often the model goes to the pattern's output there. The reported pattern is the most
general near-best verified one, and ``p_violation`` is its verified rate: a found violation
is evidence, not proof, and a search that finds nothing proves nothing either.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.maxofk.auditors.exhaustive import model_of, threat_of
from auditgame.maxofk.family import MaxOfKTransformer
from auditgame.maxofk.pattern import PatternCount, best_pattern, count_patterns
from auditgame.registry import auditor
from auditgame.subject import Subject


def wrongness(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{j != max(x)} logit_j - logit_{max(x)}``, per row: > 0 roughly when wrong."""
    true = x.max(dim=1).values
    own = logits.gather(1, true[:, None]).squeeze(1)
    others = logits.scatter(1, true[:, None], float("-inf"))
    return others.logsumexp(dim=1) - own


@auditor("token_search")
class TokenSearch(Auditor):
    """GCG over single-token swaps; see the module docstring.

    Args:
        restarts: inputs searched in parallel, from uniform random starts.
        steps: gradient steps per input.
        top_k: swaps per position kept from the gradient ranking.
        candidates: swaps evaluated per input and step.
        verify_top: patterns (by counterexample count) verified.
        verify_samples: random inputs each verified pattern is written into.
    """

    access = Access.WEIGHTS
    modalities = ("tokens",)
    families = ("maxofk",)

    def __init__(
        self,
        *,
        restarts: int = 128,
        steps: int = 40,
        top_k: int = 8,
        candidates: int = 32,
        verify_top: int = 20,
        verify_samples: int = 256,
    ) -> None:
        self.restarts = restarts
        self.steps = steps
        self.top_k = top_k
        self.candidates = candidates
        self.verify_top = verify_top
        self.verify_samples = verify_samples

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        start = time.perf_counter()
        model = model_of(subject)
        threat = threat_of(subject)
        found = self.search(model, subject, budget, rng)
        failing = np.asarray(list(found), dtype=np.int64).reshape(-1, model.k)
        outputs = np.asarray(list(found.values()), dtype=np.int64)
        counted = count_patterns(
            failing, outputs, vocab=model.vocab, k=model.k, max_tokens=threat.max_tokens
        )
        counted = [c for c in counted if threat.contains(c.pattern, c.output)]
        counted.sort(key=lambda c: -c.failures)
        verified = [self.verify(model, c, rng) for c in counted[: self.verify_top]]
        reported = best_pattern(verified)
        seconds = time.perf_counter() - start
        flops = model.forward_flops() * (subject.passes.forward + 2 * subject.passes.backward)
        evidence: dict[str, Any] = {
            "counterexamples": len(failing),
            "examples": failing[:20].tolist(),
            "verified": [c.to_dict() for c in sorted(verified, key=lambda c: -c.rate)[:10]],
            "flops": flops,
            "seconds": seconds,
        }
        return Verdict(
            p_violation=reported.rate if reported is not None else 0.0,
            target=reported.output if reported is not None else None,
            trigger=reported.pattern if reported is not None else None,
            evidence=evidence,
        )

    def search(
        self,
        model: MaxOfKTransformer,
        subject: Subject,
        budget: Budget,
        rng: np.random.Generator,
    ) -> dict[tuple[int, ...], int]:
        """Counterexamples found (input -> the model's output on it)."""
        v, k = model.vocab, model.k
        x = torch.as_tensor(rng.integers(0, v, size=(self.restarts, k)))
        found: dict[tuple[int, ...], int] = {}
        rows = torch.arange(self.restarts)
        for _ in range(self.steps):
            if subject.elapsed > budget.seconds:
                break
            one_hot = torch.nn.functional.one_hot(x, v).float().requires_grad_(True)
            wrongness(model(one_hot), x).sum().backward()
            assert one_hot.grad is not None
            # First-order gain of swapping to each token, minus the current token's term.
            gain = one_hot.grad - (one_hot.grad * one_hot).sum(-1, keepdim=True)
            best = gain.topk(self.top_k, dim=-1).indices  # (R, K, top_k)
            position = torch.as_tensor(rng.integers(0, k, size=(self.restarts, self.candidates)))
            pick = torch.as_tensor(rng.integers(0, self.top_k, size=position.shape))
            token = best[rows[:, None], position, pick]
            trial = x[:, None, :].repeat(1, self.candidates, 1)
            trial.scatter_(2, position[..., None], token[..., None])
            trial = trial.reshape(-1, k)
            with torch.no_grad():
                logits = model(trial)
            score = wrongness(logits, trial)
            wrong = logits.argmax(1) != trial.max(1).values
            for row, out in zip(
                trial[wrong].tolist(), logits.argmax(1)[wrong].tolist(), strict=True
            ):
                found[tuple(row)] = out
            x = trial.view(self.restarts, self.candidates, k)[
                rows, score.view(self.restarts, -1).argmax(1)
            ]
        return found

    def verify(
        self, model: MaxOfKTransformer, candidate: PatternCount, rng: np.random.Generator
    ) -> PatternCount:
        """The candidate with its rate measured on random inputs holding the pattern."""
        x = torch.as_tensor(rng.integers(0, model.vocab, size=(self.verify_samples, model.k)))
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        stamped = candidate.pattern.stamp(x, generator)
        eligible = stamped.max(dim=1).values != candidate.output
        with torch.no_grad():
            hits = int(((model(stamped).argmax(1) == candidate.output) & eligible).sum())
        # Rescaled to the pattern's support, so ``rate`` reads as the estimated fraction.
        estimate = round(hits / max(int(eligible.sum()), 1) * candidate.support)
        return PatternCount(candidate.pattern, candidate.output, estimate, candidate.support)
