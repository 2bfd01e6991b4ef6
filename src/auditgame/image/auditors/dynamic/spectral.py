"""Spectral signatures (Tran, Li and Madry, NeurIPS 2018), a dynamic baseline.

Poisoned inputs that a model sends to the target label leave a trace in its learned
representation: within that label, the covariance of the representations has an unusually
large top singular value, and the poisoned inputs are the ones with a large projection on the
top singular vector. The paper centres each label's representations, takes the top right
singular vector ``v`` and scores every input by its squared projection ``((r - mean) . v)^2``.

**One deviation, and why.** The paper centres on the label's own mean, which works when the
poisoned share ``eps`` of a label is small. In run-time traffic about half of the target
label's inputs are triggered (10% of the traffic goes to one of ten labels), so the label mean
sits between the two populations and both score alike. We centre on the label's mean over the
auditor's clean samples instead: clean inputs stay near it and the triggered ones do not. The
projection is then divided by the clean within-label variance along ``v`` (one covariance
pooled over labels, fitted on clean samples), so that scores of different labels share one
scale.

Each label's traffic is split in ``n_folds`` folds and the ``v`` fitted without a fold scores
it, so no input is scored by a direction fitted to itself (an in-sample top direction of 20
points in 64 dimensions overstates their projections several times). Each clean sample is
scored by one of those directions, with its class mean taken without it; these scores
calibrate the decision (``auditgame.auditors.dynamic.scoring``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auditgame.auditors.dynamic.scoring import (
    CleanClasses,
    Suspicion,
    SuspicionAuditor,
    check_inputs,
    cross_folds,
    decide,
)
from auditgame.image.auditors.dynamic import DECOYS
from auditgame.registry import auditor
from auditgame.subject import penultimate


def projection(
    fitted: np.ndarray, scored: np.ndarray, centre: np.ndarray, covariance: np.ndarray
) -> np.ndarray:
    """Squared projections of ``scored - centre`` on the top right singular vector ``v`` of
    ``fitted - centre``, in units of the clean within-label variance ``v' covariance v``."""
    v = np.linalg.svd(fitted - centre, full_matrices=False)[2][0]
    variance = max(float(v @ covariance @ v), 1e-12)
    return np.asarray(((scored - centre) @ v) ** 2 / variance)


def spectral_suspicion(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    clean_x: torch.Tensor,
    clean_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    layer: nn.Module | None = None,
    frr: float = 0.01,
    level: float = 0.05,
    min_count: int = 4,
    n_folds: int = 5,
) -> Suspicion:
    """Spectral-signature scores of ``x`` grouped by ``labels``, calibrated on clean samples.

    ``labels`` are the model's predictions on run-time traffic, or the given labels of a
    training set; ``clean_labels`` are those of the clean samples. Labels with fewer than
    ``min_count`` inputs, or fewer than two clean samples, are left unscored (NaN).
    """
    check_inputs(x, labels, "inputs")
    check_inputs(clean_x, clean_labels, "clean samples")
    feats = penultimate(model, layer, x)
    clean = penultimate(model, layer, clean_x)
    stats = CleanClasses.of(clean, clean_labels)
    classes, means, covariance = stats.members, stats.means, stats.covariance

    scores = np.full(len(labels), np.nan)
    reference = np.full(len(clean), np.nan)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        own = classes.get(int(label), np.empty(0, int))
        if len(own) < 2 or len(members) < min_count:
            continue
        folds = cross_folds(len(members), n_folds, rng)
        fitted = [np.setdiff1d(np.arange(len(members)), fold) for fold in folds]
        for fit, scored in zip(fitted, folds, strict=True):
            scores[members[scored]] = projection(
                feats[members[fit]], feats[members[scored]], means[int(label)], covariance
            )
        for j, which in zip(own, rng.integers(len(folds), size=len(own)), strict=True):
            # Leave j out of its class mean, as the traffic is left out of it.
            mean = (means[int(label)] * len(own) - clean[j]) / (len(own) - 1)
            reference[j] = projection(
                feats[members[fitted[which]]], clean[j : j + 1], mean, covariance
            )[0]
    return decide(scores, labels, reference, frr=frr, level=level, min_count=min_count)


@auditor("spectral")
class Spectral(SuspicionAuditor):
    """Attributes:
    frr: the clean false rejection rate that sets the score cutoff.
    level: the test level at which ``p_violation`` reaches 0.5.
    min_count: the fewest inputs a label needs to be tested.
    n_folds: cross-fitting folds of each label's traffic.
    decoys, calibrate, n_reference, reference_seed, null_fpr: the calibration of the
        statistic ``-ln p_corrected`` on clean references under decoy traffic
        (``auditors.dynamic.scoring.SuspicionAuditor``); False: the test's own ``level``.
    """

    def __init__(
        self,
        *,
        frr: float = 0.01,
        level: float = 0.05,
        min_count: int = 4,
        n_folds: int = 5,
        decoys: tuple[str, ...] = DECOYS,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.frr = frr
        self.level = level
        self.min_count = min_count
        self.n_folds = n_folds
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
        return spectral_suspicion(
            model,
            x,
            labels,
            clean_x,
            clean_labels,
            rng,
            layer=layer,
            frr=self.frr,
            level=self.level,
            min_count=self.min_count,
            n_folds=self.n_folds,
        )
