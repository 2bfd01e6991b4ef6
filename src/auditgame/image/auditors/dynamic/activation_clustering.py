"""Activation clustering (Chen et al., 2018), a dynamic baseline.

Inputs a backdoored model sends to the target label reach it for a different reason (the
trigger) than the label's natural inputs (the digit), and their penultimate activations show
it. For each label the paper reduces the activations to about ten dimensions (ICA; ART's
implementation defaults to PCA), splits them with 2-means, and calls a label
poisoned when one cluster is small and well separated (relative size, silhouette score).
ICA, the paper's choice, is the default; on 8x8 digits neither is reliably better
(``docs/dynamic.md``).

**Which cluster is suspect.** The paper expects the poison to be the *smaller* cluster. In
run-time traffic about half of the target label's inputs are triggered (10% of the traffic goes
to one of ten labels), so size says little; the auditor's clean samples say more: the suspect
cluster is the one whose centre lies farther from the label's clean mean. The suspect
cluster's relative size and the silhouette score are reported per label in the evidence.

**Score.** An input's score is its signed distance to the 2-means boundary (the bisector of
the two centres in the reduced space, a hyperplane in activation space), positive on the
suspect side, in units of the clean within-label standard deviation across it. Each label's
traffic is split in ``n_folds`` folds and the clustering fitted without a fold scores it; each
clean sample is scored by one of those clusterings with its label's clean mean taken without
it. The decision is ``auditgame.auditors.dynamic.scoring``'s.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

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

REDUCTIONS = ("ica", "pca")


@dataclass(frozen=True)
class Clustering:
    """2-means on one fold of a label, in a reduced space ``z = (r - origin) @ unmixing.T``."""

    origin: np.ndarray
    unmixing: np.ndarray
    centres: np.ndarray
    silhouette: float
    sizes: tuple[int, int]

    def suspect(self, clean_mean: np.ndarray) -> int:
        """The cluster whose centre lies farther from ``clean_mean`` (in the reduced space)."""
        reduced = (clean_mean - self.origin) @ self.unmixing.T
        return int(np.argmax(np.linalg.norm(self.centres - reduced, axis=1)))

    def suspect_size(self, clean_mean: np.ndarray) -> float:
        """The suspect cluster's share of the fold (the paper's relative size)."""
        return self.sizes[self.suspect(clean_mean)] / sum(self.sizes)

    def boundary(self, clean_mean: np.ndarray) -> tuple[np.ndarray, float]:
        """The 2-means boundary as a unit normal ``n`` (towards the suspect cluster) and an
        offset ``b`` in the full space: an input ``r`` lies ``(r - origin) @ n - b`` from it."""
        far = self.suspect(clean_mean)
        direction = self.centres[far] - self.centres[1 - far]
        normal = self.unmixing.T @ direction
        norm = max(float(np.linalg.norm(normal)), 1e-12)
        return normal / norm, float(self.centres.mean(0) @ direction) / norm


def cluster(points: np.ndarray, reduce: str, n_dims: int, seed: int) -> Clustering:
    """Reduce ``points`` to ``n_dims`` independent (or principal) components, then 2-means."""
    # Imported here: scipy and scikit-learn take 2 s to import, which every
    # auditor's sandbox would pay at start (docs/security.md).
    from sklearn.cluster import KMeans
    from sklearn.decomposition import FastICA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import silhouette_score

    origin = points.mean(0)
    centred = points - origin
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    # Never more components than the fold's rank: ReLU activations of a few dozen inputs can
    # span fewer than ten dimensions, and ICA cannot whiten a direction with no variance.
    rank = int((singular > 1e-6 * max(float(singular[0]), 1e-12)).sum())
    k = max(1, min(n_dims, rank))
    if reduce == "pca":
        unmixing = directions[:k]
    elif reduce == "ica":
        # Whiten here (principal components scaled to unit variance) rather than in FastICA:
        # its whitening fixes signs by the first feature, and a dead ReLU unit there (a zero
        # column) turns the whole unmixing into NaN.
        whitening = directions[:k] * (np.sqrt(len(points)) / singular[:k, None])
        with warnings.catch_warnings():
            # A few dozen points rarely let FastICA meet its tolerance; its last iterate is
            # still an unmixing that 2-means can use, as in the paper's pipeline.
            warnings.simplefilter("ignore", ConvergenceWarning)
            ica = FastICA(whiten=False, max_iter=1000, random_state=seed)
            ica.fit(centred @ whitening.T)
        unmixing = ica.components_ @ whitening
    else:
        raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}")
    reduced = centred @ unmixing.T
    kmeans = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(reduced)
    assignment = kmeans.labels_
    sizes = (int((assignment == 0).sum()), int((assignment == 1).sum()))
    silhouette = float(silhouette_score(reduced, assignment)) if min(sizes) > 0 else 0.0
    return Clustering(origin, unmixing, kmeans.cluster_centers_, silhouette, sizes)


def clustering_suspicion(
    model: nn.Module,
    x: torch.Tensor,
    labels: np.ndarray,
    clean_x: torch.Tensor,
    clean_labels: np.ndarray,
    rng: np.random.Generator,
    *,
    layer: nn.Module | None = None,
    reduce: str = "ica",
    n_dims: int = 10,
    frr: float = 0.01,
    level: float = 0.05,
    min_count: int = 4,
    n_folds: int = 5,
) -> Suspicion:
    """Activation-clustering scores of ``x`` grouped by ``labels``, calibrated on clean samples.

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

    def signed(clustering: Clustering, points: np.ndarray, mean: np.ndarray) -> np.ndarray:
        normal, offset = clustering.boundary(mean)
        spread = np.sqrt(max(float(normal @ covariance @ normal), 1e-12))
        return np.asarray(((points - clustering.origin) @ normal - offset) / spread)

    scores = np.full(len(labels), np.nan)
    reference = np.full(len(clean), np.nan)
    clusters: list[dict[str, float]] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        own = classes.get(int(label), np.empty(0, int))
        if len(own) < 2 or len(members) < min_count:
            continue
        folds = cross_folds(len(members), n_folds, rng)
        fits = [
            cluster(
                feats[members[np.setdiff1d(np.arange(len(members)), fold)]],
                reduce,
                n_dims,
                int(rng.integers(2**31)),
            )
            for fold in folds
        ]
        for clustering, scored in zip(fits, folds, strict=True):
            scores[members[scored]] = signed(clustering, feats[members[scored]], means[int(label)])
        clusters.append(
            {
                "label": int(label),
                "suspect_size": float(np.mean([f.suspect_size(means[int(label)]) for f in fits])),
                "silhouette": float(np.mean([f.silhouette for f in fits])),
            }
        )
        for j, which in zip(own, rng.integers(len(fits), size=len(own)), strict=True):
            # Leave j out of its class mean, as the traffic is left out of it.
            mean = (means[int(label)] * len(own) - clean[j]) / (len(own) - 1)
            reference[j] = signed(fits[which], clean[j : j + 1], mean)[0]
    found = decide(scores, labels, reference, frr=frr, level=level, min_count=min_count)
    return replace(found, details={"clusters": clusters})


@auditor("activation_clustering")
class ActivationClustering(SuspicionAuditor):
    """Attributes:
    reduce: "ica" (the paper's) or "pca" (ART's default) before 2-means.
    n_dims: components kept before 2-means (the paper's ten).
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
        reduce: str = "ica",
        n_dims: int = 10,
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
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}")
        self.reduce = reduce
        self.n_dims = n_dims
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
        return clustering_suspicion(
            model,
            x,
            labels,
            clean_x,
            clean_labels,
            rng,
            layer=layer,
            reduce=self.reduce,
            n_dims=self.n_dims,
            frr=self.frr,
            level=self.level,
            min_count=self.min_count,
            n_folds=self.n_folds,
        )
