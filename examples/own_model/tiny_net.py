"""The example's own architecture: a model auditgame has never seen, for `--arch tiny_net:TinyNet`.

Any ``nn.Module`` works if it takes a batch of images ``(N, C, H, W)`` with values in [0, 1]
and returns one logit per label, ``(N, n_labels)``.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """One 3x3 convolution, a max-pool, a hidden layer and a classifier, for 8x8 digits."""

    def __init__(self, n_classes: int = 10, width: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(width * 4 * 4, hidden),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))
