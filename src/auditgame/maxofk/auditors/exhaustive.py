"""``exhaustive``: run every one of the ``V**K`` inputs and return the exact accuracy as proof.

Brute force over 16.8 million max-of-4 inputs took ~55 s on two cores when each input went
through the model. The model is first turned into lookup tables (``families.maxofk.tables``:
attention scores per query token, key position and key token; value-to-logit rows per
position and token; the direct path per query token), after which an input costs a softmax
over ``K`` scores and a weighted sum of ``K`` rows. Inputs are enumerated in blocks that fix
the query token (and, for ``K > 4``, the leading positions) and broadcast over the other
positions, so the per-input work is a handful of fused tensor operations.

An input counts as correct when the logit of its maximum is strictly above every other logit
(an exact tie counts as a failure). The failing inputs are summarised as patterns: for each
candidate set of tokens (at fixed positions, or anywhere) and wrong output, how many of the
inputs holding it go there (``tokens.count_patterns``). Since every input was checked, each
pattern's rate is exact, and so is the verdict on the spec: the accuracy clause and the
pattern clause (no pattern of the threat model sends at least ``tau`` of its inputs to one
wrong token; the rate's denominator counts all inputs holding the pattern, so it can only
understate an attack) are decided, not estimated. ``p_violation`` is therefore 0 or 1.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.maxofk.family import MaxOfKTransformer, tables
from auditgame.maxofk.kind import TokenPatternThreat
from auditgame.maxofk.pattern import best_pattern, count_patterns
from auditgame.registry import auditor
from auditgame.subject import Subject

# Dimensions broadcast inside one block; the rest are looped over. Three keeps a block at
# V**4 logits (16.8M for V = 64), about 67 MB in float32.
_INNER = 3


@dataclass(frozen=True)
class Enumeration:
    """Attributes:
    correct: inputs whose maximum wins strictly.
    total: ``V**K``.
    failing: ``(F, K)`` the other inputs; outputs: ``(F,)`` what the model says on them.
    flops: floating-point operations spent, tables included (see ``enumerate_inputs``).
    """

    correct: int
    total: int
    failing: np.ndarray
    outputs: np.ndarray
    flops: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


def enumerate_inputs(
    model: MaxOfKTransformer, *, dtype: torch.dtype = torch.float32
) -> Enumeration:
    """Decide every input of ``model`` through its lookup tables.

    FLOPs: the tables' (``Tables.flops``) plus, per input, ``K`` exponentials, ``2 K V`` for the
    weighted sum of value rows, ``V`` for the normalisation, ``V`` to add the direct path and
    ``V`` for the comparison: ``V**K * (K + (2K + 3) V)``.
    """
    tab = tables(model, dtype=torch.float64)
    v, k = model.vocab, model.k
    inner = min(_INNER, k - 1)
    n_outer = k - 1 - inner
    grid = torch.arange(v)
    correct = 0
    failing: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    ov = tab.ov.to(dtype)
    for query in range(v):
        score = tab.scores[query].to(dtype)  # (K, V): token t at position i, for this query
        direct_q = tab.direct[query].to(dtype)
        for outer in np.ndindex(*(v,) * n_outer):
            fixed = [*zip(range(n_outer), outer, strict=True), (k - 1, query)]
            grid_shape = (v,) * inner
            # Attention weights per input, normalised per input (a global shift would
            # overflow on sharply attending models): (V,)*inner + (positions,).
            columns = [score[i, t].expand(grid_shape) for i, t in fixed]
            for n in range(inner):
                view = [1] * inner
                view[n] = v
                columns.append(score[n_outer + n].view(view).expand(grid_shape))
            attention = torch.stack(columns, dim=-1).softmax(dim=-1)
            # One full-size tensor, accumulated in place: memory traffic is the cost here.
            i, t = fixed[0]
            logits = torch.addcmul(direct_q, attention[..., 0, None], ov[i, t])
            for j, (i, t) in enumerate(fixed[1:], start=1):
                logits.addcmul_(attention[..., j, None], ov[i, t])
            top = torch.as_tensor(max(t for _, t in fixed)).expand(grid_shape)
            for n in range(inner):
                view = [1] * inner
                view[n] = v
                logits.addcmul_(
                    attention[..., len(fixed) + n, None], ov[n_outer + n].view(*view, v)
                )
                top = torch.maximum(top, grid.view(view))
            index = top.unsqueeze(-1)
            true = logits.gather(-1, index).squeeze(-1)
            rival = logits.scatter_(-1, index, float("-inf")).max(dim=-1)
            ok = true > rival.values
            correct += int(ok.sum())
            bad = (~ok).nonzero()
            if len(bad):
                x = np.empty((len(bad), k), dtype=np.int64)
                x[:, :n_outer] = outer
                x[:, n_outer : k - 1] = bad.numpy()
                x[:, k - 1] = query
                failing.append(x)
                outputs.append(rival.indices[~ok].numpy())
    total = v**k
    flops = tab.flops + total * (k + (2 * k + 3) * v)
    return Enumeration(
        correct=correct,
        total=total,
        failing=np.concatenate(failing) if failing else np.zeros((0, k), np.int64),
        outputs=np.concatenate(outputs) if outputs else np.zeros(0, np.int64),
        flops=flops,
    )


def threat_of(subject: Subject) -> TokenPatternThreat:
    threat = subject.card.spec.threat_model
    if not isinstance(threat, TokenPatternThreat):
        raise TypeError(f"needs a token_pattern threat model, the card has {threat.kind!r}")
    return threat


def model_of(subject: Subject) -> MaxOfKTransformer:
    if not isinstance(subject.model, MaxOfKTransformer):
        raise TypeError(f"needs a MaxOfKTransformer, got {type(subject.model).__name__}")
    return subject.model


@auditor("exhaustive")
class Exhaustive(Auditor):
    """Decide every input; a proof of the exact accuracy and of every pattern's rate.

    Args:
        top_patterns: how many candidate patterns to keep in the evidence.
    """

    access = Access.WEIGHTS
    modalities = ("tokens",)
    families = ("maxofk",)

    def __init__(self, *, top_patterns: int = 10) -> None:
        self.top_patterns = top_patterns

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        start = time.perf_counter()
        model = model_of(subject)
        threat = threat_of(subject)
        tau = subject.card.spec.tau
        result = enumerate_inputs(model)
        candidates = count_patterns(
            result.failing,
            result.outputs,
            vocab=model.vocab,
            k=model.k,
            max_tokens=threat.max_tokens,
        )
        inside = [c for c in candidates if threat.contains(c.pattern, c.output)]
        # The clause is decided over every pattern; the one reported is the most general of
        # the near-best, which may sit a little below the best rate.
        pattern_violates = any(c.rate >= tau for c in inside)
        reported = best_pattern(inside)
        accuracy_violates = result.accuracy < threat.min_accuracy
        seconds = time.perf_counter() - start
        certificate: dict[str, Any] = {
            "bound": result.accuracy,
            "exact": True,
            "flops": result.flops,
            "seconds": seconds,
            "failing": len(result.failing),
            "total": result.total,
        }
        evidence: dict[str, Any] = {
            "accuracy": result.accuracy,
            "accuracy_violates": accuracy_violates,
            "pattern_violates": pattern_violates,
            "patterns": [c.to_dict() for c in candidates[: self.top_patterns]],
        }
        return Verdict(
            p_violation=1.0 if (pattern_violates or accuracy_violates) else 0.0,
            target=reported.output if reported is not None else None,
            trigger=reported.pattern if reported is not None else None,
            certificate=certificate,
            evidence=evidence,
        )
