"""Image triggers as one shape: ``x' = (1 - m) * x + m * p``.

A BadNets patch is a binary mask over a few pixels, a blend is a constant mask ``alpha`` over
the whole image, and Neural Cleanse reconstructs exactly this (mask, pattern) pair. One
representation lets a spec check any of them as a witness and lets the judge compare a
reconstructed trigger with the planted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from auditgame.trigger import UNMARKED, trigger_kind


@trigger_kind(UNMARKED)
@dataclass(frozen=True)
class Trigger:
    """A mask-and-pattern trigger.

    Attributes:
        mask: ``(H, W)`` array in [0, 1]; how much of the pattern replaces each pixel.
        pattern: ``(C, H, W)`` array in [0, 1]; what is written where the mask is on.
    """

    mask: np.ndarray
    pattern: np.ndarray

    def __post_init__(self) -> None:
        mask = np.asarray(self.mask, dtype=np.float32)
        pattern = np.asarray(self.pattern, dtype=np.float32)
        if mask.ndim != 2 or pattern.ndim != 3 or pattern.shape[1:] != mask.shape:
            raise ValueError(
                f"a trigger needs mask (H, W) and pattern (C, H, W) of the same H, W; "
                f"got mask {mask.shape} and pattern {pattern.shape}"
            )
        if not (np.isfinite(mask).all() and np.isfinite(pattern).all()):
            raise ValueError("a trigger's mask and pattern must be finite")
        object.__setattr__(self, "mask", np.clip(mask, 0.0, 1.0))
        object.__setattr__(self, "pattern", np.clip(pattern, 0.0, 1.0))

    @property
    def l1(self) -> float:
        """The mask's L1 norm: the number of pixels the trigger owns, fractional for blends."""
        return float(self.mask.sum())

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Stamp the trigger on a batch ``(N, C, H, W)`` of inputs in [0, 1]."""
        mask = torch.as_tensor(self.mask, dtype=x.dtype, device=x.device)
        pattern = torch.as_tensor(self.pattern, dtype=x.dtype, device=x.device)
        return (1 - mask) * x + mask * pattern

    def to_dict(self) -> dict[str, Any]:
        return {"mask": self.mask.tolist(), "pattern": self.pattern.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trigger:
        return cls(mask=np.asarray(data["mask"]), pattern=np.asarray(data["pattern"]))
