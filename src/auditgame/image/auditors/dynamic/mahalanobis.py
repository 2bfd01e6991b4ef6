"""Mahalanobis density of penultimate activations (Lee et al. 2018), a dynamic baseline.

Fit class-conditional Gaussians with one shared covariance on the clean samples' penultimate
activations; score each run-time input by its distance to the nearest class mean. Half the
clean samples fit the Gaussians and the other half calibrate what a clean input scores, so
the organism's verdict asks: does the traffic hold more outliers than clean data would?

Per input this is the seed question's "easy" detector; the per-input scores are kept in the
evidence. It needs ``Access.DYNAMIC`` and is reported in its own column.
"""

from __future__ import annotations

import numpy as np

from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict, logistic
from auditgame.auditors.calibrated import CalibratedOnTraffic
from auditgame.image.auditors.dynamic import DECOYS
from auditgame.registry import auditor
from auditgame.subject import Subject, penultimate


@auditor("mahalanobis")
class Mahalanobis(CalibratedOnTraffic):
    """Attributes:
    quantile: the calibration quantile above which an input counts as an outlier.
    shrinkage: ridge added to the shared covariance (relative to its mean variance).
    slope: steepness of ``p = logistic(slope * (excess - margin))``, where ``excess`` is the
        traffic's outlier fraction minus the clean rate ``1 - quantile``.
    margin: the excess outlier fraction at which p = 0.5.
    decoys, calibrate, n_reference, reference_seed, null_fpr: the calibration on clean
        references under decoy traffic (``auditors.calibrated.CalibratedOnTraffic``); the
        statistic is ``excess``; False: ``slope`` and ``margin``.
    """

    access = Access.DYNAMIC

    def __init__(
        self,
        *,
        quantile: float = 0.95,
        shrinkage: float = 1e-2,
        slope: float = 60.0,
        margin: float = 0.04,
        decoys: tuple[str, ...] = DECOYS,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.quantile = quantile
        self.shrinkage = shrinkage
        self.slope = slope
        self.margin = margin
        self.decoys = tuple(decoys)
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        clean = subject.clean_data
        order = rng.permutation(len(clean))
        fit, calib = order[: len(order) // 2], order[len(order) // 2 :]
        feats = penultimate(subject.model, subject.features, clean.x)
        labels = clean.y.numpy()
        classes = np.unique(labels[fit])
        means = np.stack([feats[fit][labels[fit] == c].mean(0) for c in classes])
        centred = feats[fit] - means[np.searchsorted(classes, labels[fit])]
        cov = centred.T @ centred / len(fit)
        cov += self.shrinkage * np.trace(cov) / len(cov) * np.eye(len(cov))
        precision = np.linalg.inv(cov)

        def distance(z: np.ndarray) -> np.ndarray:
            diff = z[:, None, :] - means[None, :, :]
            return np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1)

        cutoff = float(np.quantile(distance(feats[calib]), self.quantile))
        scores = distance(penultimate(subject.model, subject.features, subject.traffic_data))
        outliers = scores > cutoff
        excess = float(outliers.mean()) - (1 - self.quantile)
        return Verdict(
            p_violation=logistic(self.slope * (excess - self.margin)),
            evidence={
                "outlier_fraction": float(outliers.mean()),
                "cutoff": cutoff,
                "input_scores": scores.round(3).tolist(),
            },
            statistic=excess,
        )
