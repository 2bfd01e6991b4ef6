"""A weights-only floor: is one class's row of the final layer an outlier?

All-to-one poisoning changes what the last layer must do for the target class, so that
class's weight row may stand out from the others. Which way is not known in advance: the first
version assumed *longer* and scored AUROC 0.38 on a 60-organism digits zoo (seed 1), because
there the target row was the *shortest* in 12 of 30 backdoored models and among the three
shortest in 26. The test is therefore two-sided. It is the cheapest static test there is, and
the number any real auditor should beat.

Ten rows are too few for the MAD to say what is anomalous: by the published rule (index 2)
it flagged 32 of 50 clean digits and 27 of 50 clean mnist organisms (seed-11 leaderboard),
so by default the index is judged against clean references (``auditors.calibrated``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict, anomaly_index, logistic
from auditgame.auditors.calibrated import Calibrated
from auditgame.registry import auditor
from auditgame.subject import Subject


def final_linear(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear layer to read class weights from")
    return linears[-1]


@auditor("weight_stats")
class WeightStats(Calibrated):
    """Two-sided anomaly index (MAD) of the per-class L2 norms of the final layer's rows.

    The most anomalous row is the suspected target and its index the statistic; without
    ``calibrate``, ``p = logistic(slope * (index - anomaly_threshold))``. The calibration
    parameters are ``Calibrated``'s.
    """

    access = Access.WEIGHTS

    def __init__(
        self,
        *,
        anomaly_threshold: float = 2.0,
        slope: float = 2.0,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.anomaly_threshold = anomaly_threshold
        self.slope = slope
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        with torch.no_grad():
            norms = final_linear(subject.model).weight.norm(dim=1).numpy().astype(np.float64)
        index = anomaly_index(norms)
        target = int(np.argmax(index))
        return Verdict(
            p_violation=logistic(self.slope * (index[target] - self.anomaly_threshold)),
            target=target,
            evidence={"row_norms": norms.tolist(), "anomaly_index": index.tolist()},
            statistic=float(index[target]),
        )
