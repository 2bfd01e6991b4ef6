"""Universal Litmus Patterns (Kolouri et al., CVPR 2020).

A few input patterns, learned on models whose status is known, are enough to tell a
backdoored model from a clean one by its outputs on them alone: the patterns and a linear
classifier over the pooled (concatenated) outputs are trained jointly with cross-entropy, and
a total-variation penalty keeps the patterns smooth, as in the paper, so they cannot settle on
pixel noise that happens to separate the training models. Unlike Neural Cleanse it needs
neither clean data nor gradients of the audited model, and costs one forward pass.

The fitting machinery (shadow zoo built with ``jumbo``, vectorised training, k-fold
validation) is MNTD's, in ``mntd.QueryTunedDetector``; ULP differs in its head (linear, where
MNTD has a hidden layer), its regulariser, and its features.

The features are the models' log-probabilities (``log_softmax`` of the logits), not the raw
logits the paper pools. A classifier's logits are defined only up to an additive constant per
input; that constant varies from model to model and carries no information. On the default
32-model digits shadow zoo the classifier validates at AUROC 1.00 (out of fold) on
log-probabilities, where a prototype on raw logits, trained the same way, sat at 0.50.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from auditgame.image.auditors.mntd import QueryTunedDetector
from auditgame.registry import auditor


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: the summed absolute differences of neighbouring pixels,
    down the rows and along the columns of every channel of every image."""
    down = (images[..., 1:, :] - images[..., :-1, :]).abs().sum()
    across = (images[..., :, 1:] - images[..., :, :-1]).abs().sum()
    return down + across


@auditor("ulp")
class ULP(QueryTunedDetector):
    """Universal Litmus Patterns: ``n_queries`` litmus patterns (the paper's M, 5 or 10), a
    linear classifier over the concatenated log-probabilities, and ``tv_weight`` times the
    patterns' total variation added to the loss. No witness: the verdict says whether, not
    where or to which label.

    Args:
        tv_weight: weight of the total-variation penalty (pixels in [0, 1]).
        (the others: see ``mntd.QueryTunedDetector``)
    """

    def __init__(
        self,
        *,
        n_shadow: int = 32,
        fit_seed: int = 0,
        shadow_attacks: Sequence[str] = ("jumbo",),
        n_queries: int = 10,
        tv_weight: float = 1e-3,
        steps: int = 100,
        lr: float = 1e-2,
        folds: int = 4,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        super().__init__(
            n_shadow=n_shadow,
            fit_seed=fit_seed,
            shadow_attacks=shadow_attacks,
            n_queries=n_queries,
            steps=steps,
            lr=lr,
            folds=folds,
            calibrate=calibrate,
            n_reference=n_reference,
            reference_seed=reference_seed,
            null_fpr=null_fpr,
        )
        self.tv_weight = tv_weight

    def make_head(self, n_features: int) -> nn.Module:
        return nn.Linear(n_features, 1)

    def features(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.log_softmax(dim=-1)

    def regulariser(self, queries: torch.Tensor) -> torch.Tensor:
        return self.tv_weight * total_variation(queries)
