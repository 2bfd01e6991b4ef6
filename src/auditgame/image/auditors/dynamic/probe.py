"""A linear probe on the penultimate representation, a dynamic baseline.

The idea behind "defection probes" (a learned linear direction in activation space that lights
up when a model does what it should not) without the labelled contrast pairs they need: the
auditor knows which of its inputs are clean (its clean samples) but not which run-time inputs
are triggered. So the probe is a positive-unlabelled classifier: an L2-regularised logistic
regression that separates clean samples (0) from traffic (1) on standardised penultimate
activations. Only the traffic's abnormal share can be told apart from clean inputs, so the
held-out probe score ranks run-time inputs by how abnormally the model represents them.

**Input shift is not enough.** A clean organism's traffic carries a decoy trigger, and a probe
finds those inputs too: they *are* different, and a probe on raw pixels finds them as easily.
What a backdoor adds is the model's reaction: it sends its triggered inputs to one label,
while a clean model keeps reading the digit under a decoy and spreads them over all labels.
The decision (``auditgame.auditors.dynamic.scoring``) therefore asks whether the inputs the
probe flags *gather in one predicted label*, beyond what clean samples allow. Passing
``representation="input"`` fits the same probe on raw pixels; it is the control that shows how
much the model's representation adds to the input shift and the label grouping
(``docs/dynamic.md``); ``representation="logits"`` probes the head's output instead.

Every score is held out: the clean samples and the traffic are split into ``n_folds`` folds and
each fold is scored by a probe fitted on the others, so a clean sample's score is exchangeable
with a clean run-time input's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from auditgame.auditors.dynamic.scoring import (
    Suspicion,
    SuspicionAuditor,
    check_inputs,
    cross_folds,
    decide,
)
from auditgame.image.auditors.dynamic import DECOYS
from auditgame.registry import auditor
from auditgame.subject import penultimate

REPRESENTATIONS = ("penultimate", "logits", "input")


def represent(
    model: nn.Module, layer: nn.Module | None, x: torch.Tensor, representation: str
) -> np.ndarray:
    """The features the probe reads: penultimate activations (of ``layer``), logits or
    flattened pixels."""
    if representation == "penultimate":
        return penultimate(model, layer, x)
    if representation == "logits":
        with torch.no_grad():
            return np.asarray(model(x), dtype=np.float64)
    if representation == "input":
        return np.asarray(x.flatten(1), dtype=np.float64)
    raise ValueError(f"representation must be one of {REPRESENTATIONS}; got {representation!r}")


def probe_suspicion(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    clean_x: torch.Tensor,
    clean_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    layer: nn.Module | None = None,
    representation: str = "penultimate",
    regularisation: float = 1.0,
    n_folds: int = 5,
    frr: float = 0.01,
    level: float = 0.05,
    min_count: int = 4,
) -> Suspicion:
    """Held-out probe scores of ``x`` grouped by ``labels``, calibrated on the clean samples.

    ``labels`` are the model's predictions on run-time traffic, or the given labels of a
    training set; the clean samples enter as the probe's negatives and the reference, so
    ``clean_labels`` are only checked for length.
    """
    # Imported here: scipy and scikit-learn take 2 s to import, which every
    # auditor's sandbox would pay at start (docs/security.md).
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    check_inputs(x, labels, "inputs")
    check_inputs(clean_x, clean_labels, "clean samples")
    features = np.concatenate(
        [
            represent(model, layer, clean_x, representation),
            represent(model, layer, x, representation),
        ]
    )
    target = np.concatenate([np.zeros(len(clean_x), int), np.ones(len(x), int)])
    held_out = np.empty(len(target))
    # Fold the two groups separately, so that every fold holds both.
    folds = [
        np.concatenate(parts)
        for parts in zip(
            cross_folds(len(clean_x), n_folds, rng),
            [len(clean_x) + f for f in cross_folds(len(x), n_folds, rng)],
            strict=True,
        )
    ]
    for fold in folds:
        train = np.setdiff1d(np.arange(len(target)), fold)
        probe = make_pipeline(
            StandardScaler(),
            LogisticRegression(C=regularisation, class_weight="balanced", max_iter=2000),
        )
        probe.fit(features[train], target[train])
        held_out[fold] = probe.decision_function(features[fold])
    reference, scores = held_out[: len(clean_x)], held_out[len(clean_x) :]
    return decide(scores, labels, reference, frr=frr, level=level, min_count=min_count)


@auditor("probe")
class Probe(SuspicionAuditor):
    """Attributes:
    representation: what the probe reads: "penultimate" (default), "logits", or "input"
        (raw pixels, the control).
    regularisation: the logistic regression's inverse L2 strength ``C`` on standardised
        features.
    n_folds: cross-fitting folds.
    frr: the clean false rejection rate that sets the score cutoff.
    level: the test level at which ``p_violation`` reaches 0.5.
    min_count: the fewest inputs a label needs to be tested.
    decoys, calibrate, n_reference, reference_seed, null_fpr: the calibration of the
        statistic ``-ln p_corrected`` on clean references under decoy traffic
        (``auditors.dynamic.scoring.SuspicionAuditor``); False: the test's own ``level``.
    """

    def __init__(
        self,
        *,
        representation: str = "penultimate",
        regularisation: float = 1.0,
        n_folds: int = 5,
        frr: float = 0.01,
        level: float = 0.05,
        min_count: int = 4,
        decoys: tuple[str, ...] = DECOYS,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        if representation not in REPRESENTATIONS:
            raise ValueError(
                f"representation must be one of {REPRESENTATIONS}; got {representation!r}"
            )
        self.representation = representation
        self.regularisation = regularisation
        self.n_folds = n_folds
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
        return probe_suspicion(
            model,
            x,
            labels,
            clean_x,
            clean_labels,
            rng,
            layer=layer,
            representation=self.representation,
            regularisation=self.regularisation,
            n_folds=self.n_folds,
            frr=self.frr,
            level=self.level,
            min_count=self.min_count,
        )
