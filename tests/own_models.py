"""A user's classifier as auditgame has never seen one: its inner representation is a module
called ``encoder``, not ``features`` (loaded by ``--arch own_models:EncoderNet``)."""

from __future__ import annotations

import torch
from torch import nn


class EncoderNet(nn.Module):
    """A convolutional encoder and a linear classifier over 8x8 digits."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))
