"""``flip_search``: look for one bounded additive perturbation that changes the answers.

The black-box-with-gradients counterpart of the weight battery: if the model violates its
spec, some ``delta`` with ``||delta|| <= max_norm`` (the card's threat model) flips most
inputs. The search (``perturbation.universal_search``, untargeted) runs on half of the clean
samples; its trigger's flip rate on the other half is ``p_violation``: the witness's own
success, which the spec then re-checks on the test split. It names no target: a flip is the
RFF backdoor's effect, and on a binary task an all-to-one trigger also shows as a flip of the
inputs of the other label (at most about half of them).

On random Fourier features this is where the catch shows: at the norms a planted ``omega``
needs, honest models also flip under an optimised perturbation, so a found witness proves a
violation of the spec without telling backdoored from clean.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.vector.kind import AdditiveThreat
from auditgame.vector.perturbation import universal_search


@auditor("flip_search")
class FlipSearch(Auditor):
    """Projected-Adam search for a universal additive witness (see the module docstring).

    Hyperparameters:
        norm_fraction: search within this fraction of the spec's ``max_norm``.
        steps, restarts, lr: of the search.
    """

    access = Access.CLEAN_DATA
    modalities = ("vector",)

    def __init__(
        self,
        *,
        norm_fraction: float = 1.0,
        steps: int = 150,
        restarts: int = 2,
        lr: float = 0.05,
    ) -> None:
        self.norm_fraction = norm_fraction
        self.steps = steps
        self.restarts = restarts
        self.lr = lr

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        threat = subject.card.spec.threat_model
        if not isinstance(threat, AdditiveThreat):
            raise ValueError(f"flip_search needs an additive threat model, not {threat.kind}")
        data = subject.clean_data
        order = torch.as_tensor(rng.permutation(len(data)))
        half = len(data) // 2
        fit, held = data.x[order[:half]], data.x[order[half:]]
        trigger = universal_search(
            subject.model,
            fit,
            max_norm=self.norm_fraction * threat.max_norm,
            target=None,
            steps=self.steps,
            restarts=self.restarts,
            lr=self.lr,
            generator=torch.Generator().manual_seed(int(rng.integers(2**31))),
            out_of_time=lambda: subject.elapsed > budget.seconds,
        )
        with torch.no_grad():
            flipped = subject.model(trigger.apply(held)).argmax(1) != subject.model(held).argmax(1)
        rate = float(flipped.float().mean())
        return Verdict(
            p_violation=rate,
            trigger=trigger,
            evidence={
                "held_out_flip_rate": rate,
                "norm": trigger.norm,
                "max_norm": threat.max_norm,
                "stopped_early": subject.elapsed > budget.seconds,
            },
        )
