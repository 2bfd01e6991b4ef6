"""From per-input suspicion scores to an organism's verdict, calibrated on clean samples.

The dynamic baselines (spectral signatures, activation clustering, STRIP, a linear probe) each
give every input a suspicion score. They share the decision below, so that they differ only in
the score, as the papers do.

**Calibration.** Every clean sample is scored exactly as a run-time input is, from data it
did not help fit: its class mean taken without it, the *other* clean images as overlays, a
probe fitted on the other folds. Each run-time input is scored out of sample too
(cross-fitting, where a method fits on the traffic itself). Then, under the null hypothesis that
the traffic is clean, a run-time input's score is exchangeable with a clean (reference) score.
The cutoff is the ``r``-th largest reference score, ``r = max(1, floor(frr * (m + 1)))`` for
``m`` reference scores, so a clean input exceeds it with probability about ``frr`` (the false
rejection rate STRIP picks its threshold by).

**Per-label test.** A backdoor sends its triggered inputs to one label; a decoy trigger on a
clean model does not (the inputs are shifted, but the model keeps reading the digit). So the
statistic is, for each predicted label ``c``, how many of its ``n_c`` run-time inputs exceed
the cutoff. Under exchangeability that count ``K`` has the negative hypergeometric law of the
number of "new" items ranked above the ``r``-th "reference" item in a random order of
``n_c + m`` items, which gives an exact p-value ``P(K >= k)``. The reference is pooled over
labels (a label holds only about ``m / 10`` reference samples, too few for a test of its own),
so the test assumes the score's null distribution is about the same for every label
(spectral signatures and clustering divide by the clean spread for that reason).

**Organism.** The smallest label p-value, Bonferroni-corrected over the labels tested, becomes
``p_violation = level / (level + p_corrected)``: the odds of a violation are ``level / p``, so
``p_violation = 0.5`` exactly at the conventional ``level`` 0.05 and the flag at 0.5 is a
test at that level. The flagged label is the predicted target.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict
from auditgame.auditors.calibrated import CalibratedOnTraffic
from auditgame.subject import Subject


@dataclass(frozen=True)
class LabelTest:
    """One label's exceedance test: ``exceed`` of its ``n`` inputs scored above the cutoff."""

    label: int
    n: int
    exceed: int
    p_value: float


@dataclass(frozen=True)
class Suspicion:
    """A method's per-input answer on a batch of inputs.

    Attributes:
        scores: one suspicion score per input (higher is more suspicious; NaN where a method
            could not score an input, e.g. a label with too few inputs).
        labels: the label each input was grouped under (predicted, or given in a training set).
        reference: the scores of the held-out clean samples (the null).
        cutoff: the ``r``-th largest reference score.
        tests: one test per label with at least ``min_count`` scored inputs.
        level: the test level that maps to ``p_violation = 0.5``.
        details: a method's own per-label statistics, kept in the evidence.
    """

    scores: np.ndarray
    labels: np.ndarray
    reference: np.ndarray
    cutoff: float
    tests: tuple[LabelTest, ...]
    level: float
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def p_corrected(self) -> float:
        """The smallest label p-value, Bonferroni-corrected over the labels tested."""
        if not self.tests:
            return 1.0
        return min(1.0, len(self.tests) * min(t.p_value for t in self.tests))

    @property
    def target(self) -> int | None:
        """The label with the smallest p-value (ties: the larger count), None if untested."""
        if not self.tests:
            return None
        return min(self.tests, key=lambda t: (t.p_value, -t.exceed)).label

    @property
    def p_violation(self) -> float:
        return self.level / (self.level + self.p_corrected)

    def flagged_labels(self) -> list[int]:
        """Labels whose own Bonferroni-corrected p-value is at most ``level``."""
        return [t.label for t in self.tests if len(self.tests) * t.p_value <= self.level]

    def flags(self) -> np.ndarray:
        """Per-input poison flags: above the cutoff, in a flagged label."""
        above = np.nan_to_num(self.scores, nan=-np.inf) > self.cutoff
        return above & np.isin(self.labels, self.flagged_labels())

    def evidence(self) -> dict[str, Any]:
        return {
            "p_corrected": self.p_corrected,
            "cutoff": self.cutoff,
            "reference_size": len(self.reference),
            "labels": [
                {"label": t.label, "n": t.n, "exceed": t.exceed, "p_value": t.p_value}
                for t in self.tests
            ],
            "flagged_inputs": np.flatnonzero(self.flags()).tolist(),
            "input_scores": [None if np.isnan(v) else round(float(v), 3) for v in self.scores],
            **self.details,
        }


def cross_folds(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random partition of ``range(n)`` into ``min(k, n)`` folds of near-equal size."""
    if k < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds; got {k}")
    order = rng.permutation(n)
    return [np.sort(part) for part in np.array_split(order, min(k, n))]


def cutoff_rank(m: int, frr: float) -> int:
    """``r``: the cutoff is the ``r``-th largest of ``m`` reference scores."""
    if not 0.0 < frr < 1.0:
        raise ValueError(f"frr must be in (0, 1); got {frr}")
    if m < 1:
        raise ValueError(
            "no clean sample could be scored (a label needs two clean samples and enough "
            "inputs); give more clean data"
        )
    return max(1, min(m, int(np.floor(frr * (m + 1)))))


def exceedance_p_value(n: int, exceed: int, m: int, r: int) -> float:
    """``P(K >= exceed)`` for ``K`` of ``n`` new exchangeable scores above the ``r``-th largest
    of ``m`` reference scores (negative hypergeometric: new items drawn before the ``r``-th
    reference item in a random order of all ``n + m``)."""
    # Imported here: scipy and scikit-learn take 2 s to import, which every
    # auditor's sandbox would pay at start (docs/security.md).
    from scipy.stats import nhypergeom

    if exceed <= 0:
        return 1.0
    return float(nhypergeom.sf(exceed - 1, n + m, n, r))


def decide(
    scores: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    frr: float,
    level: float,
    min_count: int,
) -> Suspicion:
    """Run the per-label exceedance tests of ``scores`` against the ``reference`` scores."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels)
    reference = np.asarray(reference, np.float64)
    if scores.shape != labels.shape:
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    reference = reference[np.isfinite(reference)]
    r = cutoff_rank(len(reference), frr)
    cutoff = float(np.sort(reference)[::-1][r - 1])
    tests: list[LabelTest] = []
    for label in np.unique(labels):
        label_scores = scores[(labels == label) & np.isfinite(scores)]
        if len(label_scores) < min_count:
            continue
        exceed = int((label_scores > cutoff).sum())
        p_value = exceedance_p_value(len(label_scores), exceed, len(reference), r)
        tests.append(LabelTest(int(label), len(label_scores), exceed, p_value))
    return Suspicion(scores, labels, reference, cutoff, tuple(tests), level)


def check_inputs(x: torch.Tensor, labels: np.ndarray, what: str) -> None:
    if len(x) != len(labels):
        raise ValueError(f"{what}: {len(x)} inputs but {len(labels)} labels")
    if len(x) == 0:
        raise ValueError(f"{what}: no inputs")


@dataclass(frozen=True)
class CleanClasses:
    """The clean samples' activations by class: the reference both spectral signatures and
    activation clustering centre on (a label's own traffic mean is half poison)."""

    members: dict[int, np.ndarray]
    means: dict[int, np.ndarray]
    covariance: np.ndarray

    @classmethod
    def of(cls, clean: np.ndarray, clean_labels: np.ndarray) -> CleanClasses:
        """Per-class member indices and means, and the covariance of the residuals about
        them, pooled over every clean sample (a sample's own share of it is 1 in ~100)."""
        members = {int(c): np.flatnonzero(clean_labels == c) for c in np.unique(clean_labels)}
        means = {c: clean[idx].mean(0) for c, idx in members.items()}
        residuals = clean - np.stack([means[int(c)] for c in clean_labels])
        return cls(members, means, residuals.T @ residuals / len(residuals))


class SuspicionAuditor(CalibratedOnTraffic):
    """A dynamic auditor whose verdict is ``decide`` on its per-input scores.

    It groups the traffic and the clean samples by the model's predicted label; subclasses
    write ``suspicion``, which is also the function a benchmark calls on a training set.
    The statistic is ``-ln p_corrected``; by default it is judged against clean references
    under decoy traffic (``CalibratedOnTraffic``), and ``calibrate=False`` keeps the
    exceedance test's own level.
    """

    access = Access.DYNAMIC

    @abstractmethod
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
        """Score ``x`` (grouped by ``labels``) against the clean samples and test each label;
        ``layer`` is the model's declared feature layer (``Subject.features``), for scores
        on its inner representation."""

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        model, clean, traffic = subject.model, subject.clean_data, subject.traffic_data
        with torch.no_grad():
            predicted = model(traffic).argmax(1).numpy()
            clean_predicted = model(clean.x).argmax(1).numpy()
        found = self.suspicion(
            model, traffic, predicted, clean.x, clean_predicted, rng, layer=subject.features
        )
        return Verdict(
            p_violation=found.p_violation,
            target=found.target,
            evidence=found.evidence(),
            # A p-value of 0 (underflow) is the most suspicious finite value there is.
            statistic=-math.log(max(found.p_corrected, 1e-300)),
        )
