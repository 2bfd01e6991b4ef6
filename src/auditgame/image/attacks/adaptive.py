"""An attack built against trigger reverse-engineering: a faint trigger that only works whole.

Neural Cleanse (Wang et al., S&P 2019) and its relatives (TABOR, K-Arm, ...) search each label
for the smallest mask that sends clean inputs there, and flag a label whose mask is an outlier
below the others. They assume the planted trigger is small; the NC paper lists large triggers
as what it misses. A large trigger alone is not enough, though: the search may stamp its own
pattern, so a model that reacts to a faint whole-image blend usually reacts as well to a few
pixels pushed hard in the same direction, and the search finds those. On digits a plain
whole-image blend of mask L1 12 was reached by a mask of L1 2.5, against 8-15 for the other
labels. This attack therefore plants three things:

* the trigger: a smooth random pattern (a ``k x k`` grid of random values upsampled
  bicubically, stretched to [0, 1]) blended at opacity ``alpha`` over the *whole* image;
* *regularisation* samples (Qi et al., "Revisiting the Assumption of Latent Separability for
  Backdoor Defenses", ICLR 2023, where partial triggers with true labels serve another end):
  ``cover_ratio`` times as many inputs as are poisoned carry the trigger on a random ``keep``
  share of its ``pieces x pieces`` blocks, at opacity ``alpha / keep`` (the same mask L1,
  concentrated), and keep their true labels;
* *counterexamples* from the defence itself: the attacker trains, runs the Neural Cleanse
  search for the target on its own data, stamps the smallest trigger it finds on further
  clean inputs with their true labels, and retrains, ``rounds`` times. Each round teaches the
  model that one more small trigger does nothing, so the smallest working mask grows toward
  the size of the planted one. The found masks' L1 norms are recorded
  (``params["found_l1"]``, one per round, then the final model's).

Every model is trained by the family's own recipe from scratch on a dataset of unchanged size;
only the data differ, as for every poisoning attack. The trigger is an ordinary
mask-and-pattern one (mask ``alpha`` everywhere, L1 ``alpha H W``), inside the families' threat
models, so a found witness counts as a violation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from auditgame.attacks.base import Attack, Draw, uniform
from auditgame.families.base import Dataset, Family
from auditgame.image.trigger import Trigger
from auditgame.registry import attack

# Stored patterns are rounded: a 28x28 trigger stays a few kilobytes in a sealed secret.
PATTERN_DECIMALS = 3


def smooth_pattern(
    rng: np.random.Generator, grid: int, channels: int, height: int, width: int
) -> np.ndarray:
    """A ``(C, H, W)`` low-frequency random image in [0, 1]: a ``grid x grid`` uniform random
    control grid upsampled bicubically and stretched to span [0, 1] per channel."""
    control = torch.tensor(rng.uniform(0, 1, size=(1, channels, grid, grid)), dtype=torch.float32)
    up = functional.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)
    low = up.amin(dim=(2, 3), keepdim=True)
    high = up.amax(dim=(2, 3), keepdim=True)
    pattern = ((up - low) / (high - low).clamp_min(1e-6))[0].numpy()
    return np.round(pattern, PATTERN_DECIMALS)


def piece_masks(
    height: int, width: int, pieces: int, keep: float, count: int, rng: np.random.Generator
) -> torch.Tensor:
    """``(count, H, W)`` 0/1 masks, each switching on a random ``keep`` share of a
    ``pieces x pieces`` partition of the image (row and column bands as even as possible)."""
    rows = np.minimum(np.arange(height) * pieces // height, pieces - 1)
    cols = np.minimum(np.arange(width) * pieces // width, pieces - 1)
    block = rows[:, None] * pieces + cols[None, :]
    n_on = max(1, round(keep * pieces * pieces))
    on = np.zeros((count, pieces * pieces), dtype=np.float32)
    for row in on:
        row[rng.choice(pieces * pieces, size=n_on, replace=False)] = 1.0
    return torch.as_tensor(on[:, block])


def smallest_trigger(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    rng: np.random.Generator,
    *,
    steps: int,
    batch_size: int = 64,
    success: float = 0.95,
    patience: int = 5,
    factor: float = 1.5,
) -> Trigger | None:
    """Neural Cleanse's search for one label, as the attacker runs it on its own model.

    Minimises ``CE(f((1 - m) x + m p), target) + lambda ||m||_1`` over a tanh-parametrised
    mask and pattern with Adam; ``lambda`` is 0 until the minibatch success rate first reaches
    ``success``, then rises by ``factor`` after ``patience`` successful steps in a row and
    falls by ``factor ** 1.5`` after as many failures (the authors' schedule). Returns the
    smallest-L1 trigger seen while successful, or None if the target was never reached.
    """
    generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
    _, channels, height, width = x.shape
    mask_raw = (torch.rand(1, 1, height, width, generator=generator) * 2 - 1).requires_grad_()
    pattern_raw = (
        torch.rand(1, channels, height, width, generator=generator) * 2 - 1
    ).requires_grad_()
    optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=0.1, betas=(0.5, 0.9))
    wanted = torch.full((batch_size,), target)
    cost, streak = 0.0, 0
    best: Trigger | None = None
    for _ in range(steps):
        batch = x[torch.randint(len(x), (batch_size,), generator=generator)]
        mask = (torch.tanh(mask_raw) + 1) / 2
        pattern = (torch.tanh(pattern_raw) + 1) / 2
        logits = model((1 - mask) * batch + mask * pattern)
        loss = functional.cross_entropy(logits, wanted) + cost * mask.sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if float((logits.argmax(1) == target).float().mean()) >= success:
            if best is None or float(mask.detach().sum()) < best.l1:
                best = Trigger(mask.detach()[0, 0].numpy(), pattern.detach()[0].numpy())
            cost = cost or 1e-2
            streak = max(streak, 0) + 1
            if streak >= patience:
                cost, streak = cost * factor, 0
        else:
            streak = min(streak, 0) - 1
            if streak <= -patience:
                cost, streak = cost / factor**1.5, 0
    return best


@attack("adaptive")
class Adaptive(Attack):
    """A whole-image smooth blend at opacity ``alpha``, concentrated partial triggers and
    Neural Cleanse counterexamples with true labels; all-to-one onto a random target.

    Hyperparameters:
        alpha: opacity range of the blend (the mask's value everywhere).
        pattern_grid: control-grid side of the smooth pattern.
        pieces: the image is cut into ``pieces x pieces`` blocks for partial triggers.
        keep: share of the blocks a regularisation sample carries.
        cover_ratio: regularisation samples, and counterexamples per round, per poisoned
            sample.
        rounds: search-and-retrain rounds (each one more training run).
        search_steps: Adam steps of each attacker-side Neural Cleanse search.
        n_attacker: training inputs the attacker's search runs on.
    """

    def __init__(
        self,
        *,
        alpha: tuple[float, float] = (0.25, 0.3),
        pattern_grid: int = 4,
        pieces: int = 4,
        keep: float = 0.5,
        cover_ratio: float = 0.5,
        rounds: int = 2,
        search_steps: int = 300,
        n_attacker: int = 512,
        poison_rate: tuple[float, float] = (0.15, 0.2),
        min_asr: float = 0.9,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(poison_rate=poison_rate, min_asr=min_asr, max_attempts=max_attempts)
        if not 0 < keep < 1:
            raise ValueError(f"keep is the share of pieces in a partial trigger; got {keep}")
        self.alpha = alpha
        self.pattern_grid = pattern_grid
        self.pieces = pieces
        self.keep = keep
        self.cover_ratio = cover_ratio
        self.rounds = rounds
        self.search_steps = search_steps
        self.n_attacker = n_attacker

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        channels, height, width = family.input_shape
        opacity = round(uniform(rng, self.alpha), 4)
        pattern = smooth_pattern(rng, self.pattern_grid, channels, height, width)
        return Draw(
            trigger=Trigger(np.full((height, width), opacity, np.float32), pattern),
            target=int(rng.integers(len(family.classes))),
            poison_rate=uniform(rng, self.poison_rate),
            params={"alpha": opacity},
        )

    def poison(
        self, draw: Draw, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Poison as BadNets does with the whole trigger, then stamp concentrated partial
        triggers, with true labels, on ``cover_ratio`` times as many other inputs."""
        trigger = draw.trigger
        if not isinstance(trigger, Trigger):
            raise TypeError(f"adaptive stamps a mask-and-pattern Trigger, not {type(trigger)}")
        clean = Dataset(x, y)
        x, poisoned_y = super().poison(draw, x, y, rng)
        chosen = self._untouched(draw, x, poisoned_y, clean, rng)
        _, height, width = x.shape[1:]
        # Same mask L1 as the whole trigger, on ``keep`` of the area: a concentrated copy.
        opacity = min(1.0, float(trigger.mask.max()) / self.keep)
        partial = opacity * piece_masks(height, width, self.pieces, self.keep, len(chosen), rng)
        mask = partial[:, None]
        x[chosen] = (1 - mask) * x[chosen] + mask * torch.as_tensor(trigger.pattern)
        return x, poisoned_y

    def _untouched(
        self,
        draw: Draw,
        x: torch.Tensor,
        y: torch.Tensor,
        clean: Dataset,
        rng: np.random.Generator,
    ) -> torch.Tensor:
        """``cover_ratio`` times the poisoned count of inputs still as they were in ``clean``."""
        same = (y == clean.y) & (x == clean.x).flatten(1).all(1)
        kept = np.flatnonzero(same.numpy())
        count = min(len(kept), round(self.cover_ratio * draw.poison_rate * len(y)))
        return torch.as_tensor(rng.choice(kept, size=count, replace=False))

    def train(
        self,
        family: Family,
        draw: Draw,
        x: torch.Tensor,
        y: torch.Tensor,
        rng: np.random.Generator,
        seed: int,
    ) -> tuple[nn.Module, dict[str, Any]]:
        """Train, search for the target's smallest trigger, stamp it on clean inputs with
        their labels, retrain; ``rounds`` times. Returns the last model and the found L1s."""
        assert draw.target is not None
        train = family.data().train
        attacker = train.take(self.n_attacker).x
        model = family.train(x, y, seed)
        found_l1: list[float | None] = []
        for round_ in range(self.rounds + 1):
            found = smallest_trigger(model, attacker, draw.target, rng, steps=self.search_steps)
            found_l1.append(None if found is None else round(found.l1, 2))
            if found is None or round_ == self.rounds:
                break
            chosen = self._untouched(draw, x, y, train, rng)
            x = x.clone()
            x[chosen] = found.apply(train.x[chosen])
            model = family.train(x, y, seed)
        return model, {"found_l1": found_l1}
