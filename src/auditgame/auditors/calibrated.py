"""One calibration for every static detector: judge its statistic against clean references.

A detector's own threshold is a guess about what a clean model scores, and the guess does not
transfer: set on digits, K-Arm's mask-size bound flagged 50 of 50 clean mnist organisms,
weight_stats's anomaly index 27 of 50 (seed-11 image leaderboard). What a clean model of a
family scores is measurable, so a ``Calibrated`` auditor measures it: its fitting stage runs
the detector on ``n_reference`` clean models trained by the family's public recipe
(``fitting.reference_zoo``: one set per family in the per-user cache, shared by every
calibrated auditor, game and audit, from seeds disjoint from every evaluated and shadow
zoo) and keeps their statistics as the null.

An organism's statistic ``s`` is then judged by its conformal p-value against that null: with
``n`` references, ``(1 + #{null >= s}) / (n + 1)`` is the probability that a fresh clean model
of the family scores at least ``s``, exactly, whatever the statistic's distribution, as long
as the organism and the references are exchangeable (trained by the same recipe). It is
interpolated linearly between the references' values (so it decreases strictly in ``s`` and
a ranking, hence AUROC, is the statistic's own) and, beyond the largest, falls off
exponentially with the scale of the null's upper tail (the mean excess over its upper
quartile): no reference reached there, so the tail's slope is the null's own, not a constant
chosen here. ``p_violation = null_fpr / (null_fpr + tail)``: 0.5 exactly where the tail is
``null_fpr``, so flagging at ``p >= 0.5`` flags a clean model with probability at most
``max(null_fpr, 1 / (n + 1))``; with the defaults (``n = 64``, ``null_fpr = 0.01``) that is at
most 1.5%, and a statistic must exceed every reference to be flagged.

``calibrate=False`` keeps the detector's published rule (its own threshold), needs no fit, and
is what a model of no family is audited under (``without_fit``).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from auditgame.access import Budget
from auditgame.auditors.base import FittedAuditor, Verdict
from auditgame.subject import Subject


def null_tail(statistic: float, null: np.ndarray) -> float:
    """The probability that a clean model scores at least ``statistic``, from the statistics
    ``null`` of clean references (see the module docstring): 1 at or below the smallest,
    the conformal p-value interpolated between them, an exponential tail beyond the largest.

    Raises:
        ValueError: fewer than 2 references, or a statistic that is not a finite number.
    """
    return float(null_tails(np.array([statistic], dtype=np.float64), null)[0])


def null_tails(statistics: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``null_tail`` of each of ``statistics`` against the same null."""
    null = np.sort(np.asarray(null, dtype=np.float64).ravel())
    statistics = np.asarray(statistics, dtype=np.float64)
    if len(null) < 2 or not np.all(np.isfinite(null)):
        raise ValueError(f"a null needs at least 2 finite reference statistics, got {null}")
    if not np.all(np.isfinite(statistics)):
        raise ValueError(f"the statistic must be a finite number, got {statistics}")
    n = len(null)
    values, first = np.unique(null, return_index=True)
    # At each distinct value v, #{null >= v} is n minus the references below it.
    tails = (1.0 + n - first) / (n + 1.0)
    upper = np.quantile(null, 0.75)
    excess = null[null > upper] - upper
    spread = float(excess.mean()) if len(excess) else 0.0
    scale = max(spread, 1e-6 * max(1.0, abs(float(values[-1]))))
    inside = np.interp(statistics, values, tails, left=1.0)
    beyond = tails[-1] * np.exp(-np.maximum(statistics - values[-1], 0.0) / scale)
    return np.where(statistics <= values[-1], inside, beyond)


class Calibrated(FittedAuditor):
    """A detector whose decision is calibrated on clean references of the family.

    Subclasses write ``examine``, which returns a ``Verdict`` whose ``statistic`` is the
    detector's raw suspicion (higher: more suspicious) and whose ``p_violation`` is its
    published rule; ``run`` replaces that probability by the calibrated one unless
    ``calibrate`` is False. A detector that needs a fit of its own (a meta-classifier) writes
    ``fit_detector``; one whose null is not simply its statistic on each reference (Neural
    Cleanse standardises per label, leaving each reference out) overrides ``null_statistics``.

    Calibration parameters (``init_calibration``):
        calibrate: judge the statistic against clean references (needs a fit); False: the
            detector's own threshold.
        n_reference: clean reference models (``fitting.reference_zoo``).
        reference_seed: which set of references, in their own seed namespace.
        null_fpr: the tail probability at which ``p_violation`` is 0.5.
    """

    without_fit: ClassVar[dict[str, Any] | None] = {"calibrate": False}
    calibrate: bool = True
    n_reference: int = 64
    reference_seed: int = 0
    null_fpr: float = 0.01

    def init_calibration(
        self, calibrate: bool, n_reference: int, reference_seed: int, null_fpr: float
    ) -> None:
        if not 0 < null_fpr < 1:
            raise ValueError(f"null_fpr is a probability in (0, 1), got {null_fpr}")
        if n_reference < 3:
            raise ValueError(f"a null needs at least 3 references, got n_reference={n_reference}")
        self.calibrate = calibrate
        self.n_reference = n_reference
        self.reference_seed = reference_seed
        self.null_fpr = null_fpr

    @abstractmethod
    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        """The detector itself: a verdict with its ``statistic`` and its own rule's p."""

    def fit_detector(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        """What the detector learns before it can examine anything; nothing by default."""
        return {}

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        tensors = self.fit_detector(family, workdir)
        if not self.calibrate:
            return tensors
        self.load_fitted(tensors)
        null = self.null_statistics(reference_subjects(self, family))
        return tensors | {"null": torch.as_tensor(np.asarray(null, dtype=np.float64))}

    def reference_traffic(self, family: str, index: int) -> torch.Tensor | None:
        """Run-time traffic for reference ``index``; None for a detector that reads none."""
        return None

    def null_statistics(self, references: Iterator[Subject]) -> np.ndarray:
        """The detector's statistic on each clean reference, as it would examine an organism."""
        values = []
        for index, subject in enumerate(references):
            verdict = self.examine(subject, Budget(), np.random.default_rng(index))
            values.append(self._statistic(verdict))
        return np.array(values)

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        verdict = self.examine(subject, budget, rng)
        statistic = self._statistic(verdict)
        evidence = verdict.evidence | {"statistic": statistic}
        if not self.calibrate:
            return replace(verdict, evidence=evidence)
        null = self.require_fitted()["null"].numpy()
        tail = null_tail(statistic, null)
        evidence |= {
            "null_tail": tail,
            "null_rank": float(np.mean(null >= statistic)),
            "n_reference": len(null),
        }
        return replace(
            verdict, p_violation=self.null_fpr / (self.null_fpr + tail), evidence=evidence
        )

    def _statistic(self, verdict: Verdict) -> float:
        if verdict.statistic is None or not np.isfinite(verdict.statistic):
            raise ValueError(f"{self.name}'s examine returned no finite statistic")
        return float(verdict.statistic)


class CalibratedOnTraffic(Calibrated):
    """A dynamic detector, calibrated on clean references under *decoy* traffic.

    A game hands a clean organism run-time traffic in which a tenth of the inputs carry a
    decoy trigger (``traffic``): the inputs are shifted as a backdoored organism's are, so
    traffic alone tells nothing. A detector that tests the traffic against clean samples
    (is it more unusual than clean data?) therefore flags clean organisms as well: on the
    seed-11 mnist leaderboard spectral signatures flagged 52% of them, Mahalanobis 46%. Its
    null must be what it scores on a clean model *under such traffic*, so each reference gets
    traffic of the game's shape (``Budget().n_traffic`` test inputs, a tenth stamped with a
    decoy of one of ``decoys``, public attacks). The decoys a zoo's clean organisms carry
    are its own attacks'; ``decoys`` should cover them (by default every built-in attack of
    the track), and the guarantee holds for traffic drawn as the references' is.

    The references take the decoys in turn (reference ``i`` gets ``decoys[i % len]``) rather
    than at random: the null's upper tail comes from the decoys a detector reacts to most,
    and a random draw leaves their share to chance. Measured on the digits seed-13
    leaderboard (100 clean organisms, 7 attacks' decoys): with random draws, 7 of the 64
    references carried a warp, whose traffic the linear probe scores far higher than any
    other decoy's (median ``-ln p`` about 3, up to 24, against 0 for patches); the null's
    largest value happened to be 5.1, and 6 of the 100 clean organisms, all with warps,
    were flagged. References and zoo organisms scored alike under the same warp traffic
    (30 each, Mann-Whitney p = 0.66): the models were exchangeable, the mixture's draw was
    the noise.

    Subclasses set ``decoys`` in ``__init__``.
    """

    decoys: tuple[str, ...] = ()

    def reference_traffic(self, family: str, index: int) -> torch.Tensor:
        """Decoy traffic for reference ``index``, from its own seed."""
        # Imported here: these modules import the auditors package, which imports this one.
        from auditgame import registry
        from auditgame.secret import Secret
        from auditgame.traffic import make_traffic

        if not self.decoys:
            raise ValueError(f"{self.name} names no decoy attack to calibrate on")
        rng = np.random.default_rng([self.reference_seed, index, 0x7AFF1C])
        clean = Secret(backdoored=False, clean_accuracy=0.0, salt="reference")
        fam = registry.get("family", family)()
        decoy = self.decoys[index % len(self.decoys)]
        return make_traffic(fam, clean, Budget().n_traffic, rng, decoys=(decoy,))


def reference_subjects(auditor: Calibrated, family: str) -> Iterator[Subject]:
    """The clean references of ``family`` as subjects at the auditor's access, with the
    auditor's ``reference_traffic`` (decoy traffic for a ``CalibratedOnTraffic`` one)."""
    # Imported here: these modules import the auditors package, which imports this one.
    from auditgame.fitting import reference_zoo
    from auditgame.run.task import make_subject
    from auditgame.zoo import Zoo

    zoo = Zoo(reference_zoo(family, auditor.n_reference, auditor.reference_seed))
    for index, oid in enumerate(zoo.ids):
        traffic = auditor.reference_traffic(family, index)
        yield make_subject(zoo.organism(oid), auditor.access, Budget(), traffic)
