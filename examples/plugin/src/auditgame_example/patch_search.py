"""``patch_search``: try every small binary patch, keep the one that best hijacks a label.

BadNets (Gu et al. 2017, arXiv 1708.06733) plants a small square of black and white pixels.
Neural Cleanse (Wang et al., S&P 2019) looks for such triggers by gradient descent on a
continuous mask and pattern, which can settle in a local minimum. For the smallest patches
the attack's own space is small enough to search exactly: every ``k x k`` patch of binary
pixels at every position, for each side ``k`` in ``sizes`` whose mask fits the spec's threat
model (784 patches of side 2 on an 8x8 image, 128 of side 1). One forward pass scores a
patch for every label at once: the objective of label ``t`` is the mean softmax probability
of ``t`` over clean inputs not labelled ``t``.

1. Screen: every patch on ``n_screen`` search inputs, in batches; the ``keep`` best
   (patch, label) pairs survive.
2. Rescore the survivors on all the search inputs; the best is the witness.
3. Measure the witness's attack-success rate on clean samples the search did not see.
   ``p_violation`` is the posterior probability (uniform prior) that its true success rate
   reaches the spec's ``tau``, given those held-out hits.

That is evidence *for* a violation, and only of one kind: a model can violate its spec with
a trigger outside this search (a blend, a warp, a grey or larger patch) and then this auditor
says little. What it finds, the spec checks without any secret.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from scipy import stats

from auditgame import metrics
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.image.kind import MaskPatternThreat
from auditgame.image.trigger import Trigger
from auditgame.registry import auditor
from auditgame.subject import Subject


@auditor("patch_search")
class PatchSearch(Auditor):
    """Exhaustive search over small binary square patches (see the module docstring).

    Args:
        sizes: patch sides searched; a side is skipped when ``k * k`` exceeds the threat
            model's mask norm. Not 3 by default: on digits, 3x3 patches flip over half the
            held-out inputs of *clean* models too (0.50-0.70 on four clean organisms, found by
            a greedy search), which the digits spec (mask norm up to 20, ``tau`` 0.5) counts
            as a violation; every model would be flagged. A 3x3 BadNets patch is then found
            only when a 2x2 part of it works alone.
        n_screen: search inputs each patch is screened on.
        keep: (patch, label) pairs rescored on all the search inputs.
        search_fraction: share of the clean samples the search uses; the rest measure the
            witness.
        max_patches: refuse a search larger than this (``2 ** (C k^2)`` patterns per
            position grow fast with the side and the channels).
    """

    access = Access.CLEAN_DATA
    modalities = ("image",)

    def __init__(
        self,
        *,
        sizes: tuple[int, ...] = (1, 2),
        n_screen: int = 10,
        keep: int = 32,
        search_fraction: float = 0.5,
        max_patches: int = 20_000,
    ) -> None:
        self.sizes = sizes
        self.n_screen = n_screen
        self.keep = keep
        self.search_fraction = search_fraction
        self.max_patches = max_patches

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        if not 0 < self.search_fraction < 1:
            raise ValueError(f"search_fraction must be in (0, 1), not {self.search_fraction}")
        data = subject.clean_data
        order = torch.as_tensor(rng.permutation(len(data)))
        cut = max(1, int(self.search_fraction * len(data)))
        x_search, y_search = data.x[order[:cut]], data.y[order[:cut]]
        x_held, y_held = data.x[order[cut:]], data.y[order[cut:]]
        if len(y_held) == 0:
            raise ValueError("patch_search needs at least two clean samples")
        threat = subject.card.spec.threat_model
        max_l1 = threat.max_mask_l1 if isinstance(threat, MaskPatternThreat) else np.inf
        channels, height, width = (int(v) for v in data.x.shape[1:])
        patches = [
            (k, row, col, bits)
            for k in sorted({k for k in self.sizes if 0 < k * k <= max_l1})
            for row, col in itertools.product(range(height - k + 1), range(width - k + 1))
            for bits in itertools.product((0.0, 1.0), repeat=channels * k * k)
        ]
        if not patches or len(patches) > self.max_patches:
            raise ValueError(
                f"sizes {self.sizes} give {len(patches)} patches under a mask norm of "
                f"{max_l1}; need between 1 and max_patches={self.max_patches}"
            )
        n_labels = len(subject.card.classes)
        screen = Objective(subject.model, x_search[: self.n_screen], y_search[: self.n_screen])
        scores = torch.full((len(patches), n_labels), -1.0)
        screened, stopped_early = 0, False
        for start in range(0, len(patches), 256):
            if start and subject.elapsed > budget.seconds:
                stopped_early = True
                break
            chunk = patches[start : start + 256]
            scores[start : start + len(chunk)] = screen.scores(chunk, channels)
            screened += len(chunk)
        top = torch.topk(scores.flatten(), min(self.keep, scores.numel())).indices.tolist()
        pairs = [divmod(i, n_labels) for i in top]
        full = Objective(subject.model, x_search, y_search).scores(
            [patches[p] for p, _ in pairs], channels
        )
        best = int(torch.tensor([full[i, t] for i, (_, t) in enumerate(pairs)]).argmax())
        (index, target), score = pairs[best], float(full[best, pairs[best][1]])
        k, row, col, bits = patches[index]
        trigger = stamp_trigger(k, row, col, bits, channels, height, width)

        asr = metrics.attack_success_rate(subject.model, trigger.apply, x_held, y_held, target)
        others = int((y_held != target).sum())
        hits = round(asr * others)
        evidence: dict[str, Any] = {
            "search_score": score,
            "held_out_asr": asr,
            "held_out_hits": hits,
            "held_out_inputs": others,
            "patch_size": k,
            "position": [row, col],
            "patches_screened": screened,
            "patches": len(patches),
            "stopped_early": stopped_early,
        }
        tau = subject.card.spec.tau
        return Verdict(
            p_violation=float(stats.beta.sf(tau, hits + 1, others - hits + 1)),
            target=target,
            trigger=trigger,
            evidence=evidence,
        )


def stamp_trigger(
    k: int, row: int, col: int, bits: tuple[float, ...], channels: int, height: int, width: int
) -> Trigger:
    """The mask-and-pattern trigger of a ``k x k`` binary patch at ``(row, col)``."""
    mask = np.zeros((height, width), np.float32)
    mask[row : row + k, col : col + k] = 1.0
    pattern = np.zeros((channels, height, width), np.float32)
    pattern[:, row : row + k, col : col + k] = np.asarray(bits, np.float32).reshape(channels, k, k)
    return Trigger(mask, pattern)


class Objective:
    """Scores patches for every label on fixed inputs: for label ``t``, the mean probability
    of ``t`` over the inputs not labelled ``t``."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x = model, x
        with torch.no_grad():
            n_labels = int(model(x[:1]).shape[1])
        other = (y[:, None] != torch.arange(n_labels)[None, :]).float()
        # weights[s, t]: input s counts towards label t's mean when it is not labelled t.
        self.weights = other / other.sum(0).clamp(min=1)

    def scores(self, patches: list[tuple[int, int, int, tuple[float, ...]]], channels: int) -> Any:
        """``(len(patches), labels)`` objectives, in one batch."""
        n, _, height, width = self.x.shape
        mask = torch.zeros(len(patches), 1, 1, height, width)
        pattern = torch.zeros(len(patches), 1, channels, height, width)
        for i, (k, row, col, bits) in enumerate(patches):
            mask[i, 0, 0, row : row + k, col : col + k] = 1.0
            pattern[i, 0, :, row : row + k, col : col + k] = torch.tensor(bits).view(channels, k, k)
        stamped = (1 - mask) * self.x[None] + mask * pattern
        with torch.no_grad():
            probs = self.model(stamped.flatten(0, 1)).softmax(dim=1).view(len(patches), n, -1)
        return torch.einsum("pst,st->pt", probs, self.weights)
