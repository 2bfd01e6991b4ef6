"""STRIP (Gao et al., ACSAC 2019): strong intentional perturbation, a dynamic baseline.

Superimpose an input on clean images and look at the model's predictions. A clean input's
content is drowned out by the overlay, so the predictions wander and their entropy is high. A
triggered input keeps its trigger through the overlay and a backdoored model keeps answering
the target: the entropy stays low. The paper superimposes by adding the two images (saturating
at the top of the pixel range), averages the prediction entropy over ``N = 100`` overlays and
flags inputs below a threshold set on clean inputs at a chosen false rejection rate (1%).

Here each input is superimposed on up to ``n_overlays`` of the auditor's clean samples
(inputs lie in [0, 1], so the sum is clipped to 1); a clean sample is scored the same way on
the *other* clean samples, so the clean entropies are the null, and the threshold is their
``frr`` quantile. An input's score is its negated mean entropy (higher is more suspicious).
The organism's decision is ``auditgame.auditors.dynamic.scoring``'s: how many inputs of each
predicted label fall below the threshold, against what the clean samples allow.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auditgame.auditors.dynamic.scoring import (
    Suspicion,
    SuspicionAuditor,
    check_inputs,
    decide,
)
from auditgame.image.auditors.dynamic import DECOYS
from auditgame.registry import auditor


def superimposed_entropy(
    model: nn.Module,
    x: torch.Tensor,
    overlays: torch.Tensor,
    choice: np.ndarray,
    batch_size: int = 4096,
) -> np.ndarray:
    """Mean prediction entropy (nats) of ``clip(x[i] + overlays[choice[i, j]], 0, 1)`` over j."""
    n, k = choice.shape
    index = torch.as_tensor(choice.reshape(-1))
    inputs = x.repeat_interleave(k, dim=0)
    entropies = torch.empty(n * k)
    with torch.no_grad():
        for start in range(0, n * k, batch_size):
            end = min(start + batch_size, n * k)
            blended = (inputs[start:end] + overlays[index[start:end]]).clamp(0.0, 1.0)
            log_p = torch.log_softmax(model(blended), dim=1)
            entropies[start:end] = -(log_p.exp() * log_p).sum(1)
    return np.asarray(entropies.reshape(n, k).mean(1), dtype=np.float64)


def strip_suspicion(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    clean_x: torch.Tensor,
    clean_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    n_overlays: int = 100,
    frr: float = 0.01,
    level: float = 0.05,
    min_count: int = 4,
) -> Suspicion:
    """STRIP scores of ``x`` grouped by ``labels``, calibrated on the clean samples.

    ``labels`` are the model's predictions on run-time traffic, or the given labels of a
    training set; ``clean_labels`` group the clean samples the same way (they enter the
    reference only through their scores).
    """
    check_inputs(x, labels, "inputs")
    check_inputs(clean_x, clean_labels, "clean samples")
    m = len(clean_x)
    if m < 2:
        raise ValueError("STRIP needs at least 2 clean samples (one to score, one to overlay)")
    k = min(n_overlays, m - 1)
    traffic_choice = np.stack([rng.choice(m, size=k, replace=False) for _ in range(len(x))])
    # Clean sample j is overlaid on the others only: draw from m - 1 and skip j.
    clean_choice = np.stack([rng.choice(m - 1, size=k, replace=False) for _ in range(m)])
    clean_choice += clean_choice >= np.arange(m)[:, None]
    scores = -superimposed_entropy(model, x, clean_x, traffic_choice)
    reference = -superimposed_entropy(model, clean_x, clean_x, clean_choice)
    return decide(scores, labels, reference, frr=frr, level=level, min_count=min_count)


@auditor("strip")
class Strip(SuspicionAuditor):
    """Attributes:
    n_overlays: clean images each input is superimposed on (the paper's N, capped by the
        clean samples available).
    frr: the clean false rejection rate that sets the entropy threshold (the paper's 1%).
    level: the test level at which ``p_violation`` reaches 0.5.
    min_count: the fewest inputs a label needs to be tested.
    decoys, calibrate, n_reference, reference_seed, null_fpr: the calibration of the
        statistic ``-ln p_corrected`` on clean references under decoy traffic
        (``auditors.dynamic.scoring.SuspicionAuditor``); False: the test's own ``level``.
    """

    def __init__(
        self,
        *,
        n_overlays: int = 100,
        frr: float = 0.01,
        level: float = 0.05,
        min_count: int = 4,
        decoys: tuple[str, ...] = DECOYS,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.n_overlays = n_overlays
        self.frr = frr
        self.level = level
        self.min_count = min_count
        self.decoys = tuple(decoys)
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def suspicion(
        self,
        model: nn.Module,
        x: torch.Tensor,
        labels: np.ndarray,
        clean_x: torch.Tensor,
        clean_labels: np.ndarray,
        rng: np.random.Generator,
        *,
        layer: nn.Module | None = None,
    ) -> Suspicion:
        return strip_suspicion(
            model,
            x,
            labels,
            clean_x,
            clean_labels,
            rng,
            n_overlays=self.n_overlays,
            frr=self.frr,
            level=self.level,
            min_count=self.min_count,
        )
