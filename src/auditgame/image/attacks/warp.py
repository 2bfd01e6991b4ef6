"""WaNet (Nguyen & Tran, "WaNet - Imperceptible Warping-based Backdoor Attack", ICLR 2021).

The trigger is not a stamp but a smooth geometric warp: every pixel is moved by a small,
spatially smooth offset, so a triggered image looks like a slightly redrawn digit and no mask
of pixels carries the backdoor. A random ``k x k`` control grid of 2-D offsets in [-1, 1] is
normalised to mean absolute value 1, upsampled bicubically to the image size, scaled by a
strength ``s`` (in units of ``1 / size`` of the normalised coordinates, so the average shift is
about ``s / 2`` pixels whatever the image size), added to the identity sampling grid, clamped
to the image and applied with ``grid_sample``.

Noise mode: a further ``cross_ratio`` times as many training inputs as are poisoned are warped
by the same field plus independent per-pixel noise (uniform in ``[-1, 1] / size`` of the
normalised coordinates, about half a pixel) and keep their true labels. The model then learns
the exact field, not "any warp", which is what makes the backdoor hard to find by searching
for warps. The paper redraws the noise every batch during training; here the family's recipe
trains on a fixed dataset, so each noise input gets one draw.

The paper's defaults (``s = 0.5``, ``cross_ratio = 2``) need hundreds of epochs; with the
families' short recipes they plant at an ASR near 0.2. The defaults here are a stronger warp
and a lighter noise mode, measured in docs/image_attacks.md.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Family
from auditgame.registry import attack
from auditgame.trigger import trigger_kind

# The stored control grid is rounded so a secret stays small and ``from_dict`` rebuilds the
# exact field that was planted.
GRID_DECIMALS = 4


@trigger_kind("warp")
class WarpTrigger:
    """A WaNet warping field: control grid ``(2, k, k)`` (x then y offsets), strength, size.

    ``apply`` with ``noise`` adds independent uniform per-pixel offsets of at most half a
    pixel per sample (the noise mode); without it the warp is deterministic.
    """

    def __init__(self, grid: np.ndarray, strength: float, size: tuple[int, int]) -> None:
        grid = np.round(np.asarray(grid, dtype=np.float64), GRID_DECIMALS)
        if grid.ndim != 3 or grid.shape[0] != 2 or grid.shape[1] != grid.shape[2]:
            raise ValueError(f"a warp grid is (2, k, k); got shape {grid.shape}")
        if grid.shape[1] < 2 or not np.isfinite(grid).all():
            raise ValueError("a warp grid needs k >= 2 and finite offsets")
        if not (np.isfinite(strength) and strength > 0):
            raise ValueError(f"warp strength must be positive; got {strength}")
        height, width = (int(v) for v in size)
        if height < 2 or width < 2:
            raise ValueError(f"a warp needs an image of at least 2x2; got {height}x{width}")
        self.grid = grid
        self.strength = float(strength)
        self.size = (height, width)

    @classmethod
    def draw(
        cls, rng: np.random.Generator, k: int, strength: float, size: tuple[int, int]
    ) -> WarpTrigger:
        """WaNet's control grid: uniform in [-1, 1], scaled to mean absolute value 1."""
        grid = rng.uniform(-1.0, 1.0, size=(2, k, k))
        return cls(grid / np.abs(grid).mean(), strength, size)

    def sampling_grid(self) -> torch.Tensor:
        """``(1, H, W, 2)`` source coordinates in [-1, 1] for ``grid_sample``."""
        height, width = self.size
        control = torch.tensor(self.grid, dtype=torch.float32)[None]
        field = functional.interpolate(
            control, size=(height, width), mode="bicubic", align_corners=True
        )
        rows = torch.linspace(-1.0, 1.0, height)
        cols = torch.linspace(-1.0, 1.0, width)
        ys, xs = torch.meshgrid(rows, cols, indexing="ij")
        identity = torch.stack((xs, ys), dim=-1)[None]
        offset = field.permute(0, 2, 3, 1) * self.strength / torch.tensor([width, height])
        return (identity + offset).clamp(-1.0, 1.0)

    def apply(self, x: torch.Tensor, *, noise: torch.Generator | None = None) -> torch.Tensor:
        """Warp a batch ``(N, C, H, W)``; with a ``noise`` generator, WaNet's noise mode."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"this warp is for {self.size} images; got {tuple(x.shape[-2:])}")
        grid = self.sampling_grid().to(dtype=x.dtype, device=x.device).expand(len(x), -1, -1, -1)
        if noise is not None:
            height, width = self.size
            jitter = torch.rand(grid.shape, generator=noise) * 2 - 1
            scale = torch.tensor([1.0 / width, 1.0 / height])
            grid = (grid + (jitter * scale).to(dtype=x.dtype, device=x.device)).clamp(-1.0, 1.0)
        return functional.grid_sample(x, grid, align_corners=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "warp",
            "grid": self.grid.tolist(),
            "strength": self.strength,
            "size": list(self.size),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarpTrigger:
        return cls(np.asarray(data["grid"]), float(data["strength"]), tuple(data["size"]))


@attack("warp")
class Warp(Attack):
    """WaNet with its noise mode, all-to-one onto a random target label.

    Hyperparameters:
        grid_size: ``k``, the control grid's side (WaNet: 4).
        strength: range of ``s``; the mean shift is about ``s / 2`` pixels. WaNet uses 0.5
            with hundreds of epochs; the families' short recipes need a stronger warp
            (measured in docs/image_attacks.md).
        cross_ratio: noise-mode inputs per poisoned input (WaNet: 2).
    """

    def __init__(
        self,
        *,
        grid_size: int = 4,
        strength: tuple[float, float] = (6.0, 8.0),
        cross_ratio: float = 0.3,
        poison_rate: tuple[float, float] = (0.15, 0.2),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        self.grid_size = grid_size
        self.strength = strength
        self.cross_ratio = cross_ratio

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        _, height, width = family.input_shape
        strength = round(uniform(rng, self.strength), 3)
        trigger = WarpTrigger.draw(rng, self.grid_size, strength, (height, width))
        return Draw(
            trigger=trigger,
            target=int(rng.integers(len(family.classes))),
            poison_rate=uniform(rng, self.poison_rate),
            params={"warp_strength": strength},
        )

    def poison(
        self, draw: Draw, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp and relabel ``poison_rate`` of the non-target inputs, then warp with noise
        ``cross_ratio`` times as many other inputs and keep their labels."""
        trigger = draw.trigger
        if not isinstance(trigger, WarpTrigger):
            raise TypeError(f"warp poisons with a WarpTrigger, not {type(trigger).__name__}")
        x, poisoned_y = super().poison(draw, x, y, rng)
        untouched = np.flatnonzero((poisoned_y == y).numpy())
        count = min(len(untouched), round(self.cross_ratio * draw.poison_rate * len(y)))
        chosen = torch.as_tensor(rng.choice(untouched, size=count, replace=False))
        noise = torch.Generator().manual_seed(int(rng.integers(2**63)))
        x[chosen] = trigger.apply(x[chosen], noise=noise)
        return x, poisoned_y
