"""``bounds``: a sound lower bound on accuracy, cheaper than enumerating, in the spirit of the
"cubic" proofs of Gross et al. (2024).

The model's logits on ``x`` are ``direct[q] + sum_i a_i ov[i, x_i]`` with ``q`` the last token
and ``a = softmax_i(scores[q, i, x_i])`` (``families.maxofk.tables``). The inputs are split
into classes by the query token ``q``, the maximum ``m``, the set ``S`` of earlier positions
that hold ``m``, and ``c``, the largest token below ``m``. Within a class the positions outside
``S`` (the *free* positions) hold anything in ``0..c``; the proof certifies a class when, for
every wrong token ``j``, the margin ``logit[m] - logit[j]`` is positive for every such input.

With ``w_i = exp(score_i)``, the attention part of the margin is a weighted average
``(P + sum_free w_i d_i) / (W + sum_free w_i)``, where ``P`` and ``W`` come from the fixed
positions (the copies of ``m`` and the query) and ``d_i`` is the margin contribution of the
value row at free position ``i``. The proof relaxes each free position independently: ``d_i``
to its minimum over tokens ``0..c`` and ``w_i`` to the interval between its minimum and
maximum over those tokens. That set contains every input of the class, and the weighted
average, monotone in each ``w_i`` with the others fixed, takes its minimum over the box at a
corner, so checking the ``2**|free|`` corners is exact for the relaxation. Prefix minima and
maxima over ``t <= c`` are computed once per position; the classes cost about ``V**3`` corner
evaluations per subset ``S``, each a vector over the ``V`` wrong tokens: cubic in ``V`` rather
than the ``V**K`` of enumeration.

Summing the sizes of the certified classes (counted exactly) over ``V**K`` gives the bound; it
is never above the true accuracy (the tests check it against ``exhaustive``). The proof runs
in float64; a margin counts as positive only above ``margin_tol`` times the largest logit
magnitude, headroom for the float32 rounding of the model itself.

The proof can establish compliance, never a violation: an uncertified class may be correct.
``p_violation`` is 0 when it proves both clauses of the spec (accuracy at least the threat
model's ``min_accuracy``, and too few uncertified inputs for any pattern of the threat model to
reach ``tau``), and otherwise ``1 - bound``, the share of inputs it could not vouch for.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.maxofk.auditors.exhaustive import model_of, threat_of
from auditgame.maxofk.family import MaxOfKTransformer, tables
from auditgame.registry import auditor
from auditgame.subject import Subject


def accuracy_bound(model: MaxOfKTransformer, *, margin_tol: float = 1e-5) -> tuple[int, int]:
    """``(certified inputs, FLOPs)`` of the class-by-class proof described in the module."""
    tab = tables(model, dtype=torch.float64)
    v, k = model.vocab, model.k
    last = k - 1
    tokens = torch.arange(v)
    # Per query, scaled by the query's own weight (ratios are unchanged): it is present in every
    # input, so normalisers stay >= 1. A weight that overflows makes a ratio NaN, which
    # compares false and leaves its class uncertified: the bound loses, soundness does not.
    own = tab.scores[tokens, last, tokens]
    w = (tab.scores - own[:, None, None]).exp()  # (Q, K, T)
    w_lo = w.cummin(dim=2).values  # (Q, K, C): min over t <= c
    w_hi = w.cummax(dim=2).values
    # Logits are at most this large in magnitude; the model runs in float32, whose rounding
    # is relative, so the tolerance is too.
    tol = margin_tol * float(tab.direct.abs().max() + tab.ov.abs().max())
    certified = 0
    flops = tab.flops + 4 * v * k * v
    for m in range(v):
        delta = tab.ov[:, :, m : m + 1] - tab.ov  # (K, T, J): contribution to logit[m] - logit[j]
        d_lo = delta.cummin(dim=1).values  # (K, C, J)
        q = tokens[: m + 1]
        direct = tab.direct[q, m : m + 1] - tab.direct[q]  # (Q, J)
        w_query = w[q, last, q]  # (Q,)
        p_query = w_query[:, None] * delta[last, q]  # (Q, J)
        flops += 2 * k * v * v + 4 * (m + 1) * v
        for held in itertools.product((False, True), repeat=k - 1):
            s_pos = [i for i in range(k - 1) if held[i]]
            free = [i for i in range(k - 1) if not held[i]]
            w_fixed = w_query + sum((w[q, i, m] for i in s_pos), torch.zeros(m + 1))
            p_fixed = p_query + sum(
                (w[q, i, m][:, None] * delta[i, m][None] for i in s_pos), torch.zeros(m + 1, v)
            )
            query_ok = q == m if not s_pos else torch.ones(m + 1, dtype=torch.bool)
            if not free:
                margin = direct + p_fixed / w_fixed[:, None]
                margin[:, m] = float("inf")
                ok = (margin.min(dim=1).values > tol) & query_ok
                certified += int(ok.sum())
                flops += 4 * (m + 1) * v
                continue
            if m == 0:
                continue
            c = tokens[:m]
            worst = torch.full((m + 1, m, v), float("inf"), dtype=torch.float64)
            for corner in itertools.product((False, True), repeat=len(free)):
                num = p_fixed[:, None, :].clone()
                den = w_fixed[:, None].clone()
                for i, high in zip(free, corner, strict=True):
                    wi = (w_hi if high else w_lo)[q, i][:, :m]  # (Q, C)
                    num = num + wi[:, :, None] * d_lo[i, :m][None]
                    den = den + wi
                worst = torch.minimum(worst, num / den[:, :, None])
            flops += 2 ** len(free) * (m + 1) * m * v * (2 * len(free) + 2)
            margin = direct[:, None, :] + worst
            margin[:, :, m] = float("inf")
            ok = margin.min(dim=2).values > tol  # (Q, C)
            n_free = len(free)
            below = (c + 1) ** n_free - c**n_free  # free tokens in 0..c, at least one equal to c
            count = torch.where(
                q[:, None] == m,
                below[None, :],
                torch.where(
                    q[:, None] == c[None, :],
                    ((c + 1) ** n_free)[None, :].expand(m + 1, m),
                    torch.where(q[:, None] < c[None, :], below[None, :], 0),
                ),
            )
            count = torch.where(query_ok[:, None], count, 0)
            certified += int((count * ok).sum())
    return certified, flops


@auditor("bounds")
class Bounds(Auditor):
    """A sound accuracy lower bound from per-class worst cases; see the module docstring.

    Args:
        margin_tol: a margin must exceed this times the largest logit magnitude to count as
            positive (float32 headroom).
    """

    access = Access.WEIGHTS
    modalities = ("tokens",)
    families = ("maxofk",)

    def __init__(self, *, margin_tol: float = 1e-5) -> None:
        self.margin_tol = margin_tol

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        start = time.perf_counter()
        model = model_of(subject)
        threat = threat_of(subject)
        tau = subject.card.spec.tau
        certified, flops = accuracy_bound(model, margin_tol=self.margin_tol)
        total = model.vocab**model.k
        bound = certified / total
        smallest_pattern = model.vocab ** (model.k - min(threat.max_tokens, model.k))
        proven = bound >= threat.min_accuracy and (total - certified) < tau * smallest_pattern
        certificate: dict[str, Any] = {
            "bound": bound,
            "exact": False,
            "flops": flops,
            "seconds": time.perf_counter() - start,
            "certified": certified,
            "total": total,
        }
        return Verdict(
            p_violation=0.0 if proven else 1.0 - bound,
            certificate=certificate,
            evidence={"proven_compliant": proven},
        )
