"""Dormant units whose weights are not their initialisation: a route clean inputs leave off.

Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018) rests on one observation: the neurons a
backdoor uses are *dormant* on clean inputs, and pruning the units clean data never activates
removes the backdoor. Dormancy alone does not make a detector: a trained classifier has many
dead units of its own (25-38 of the 64 hidden units of a digits CNN never fire). But training
leaves a dead unit where it found it: no gradient reaches the row of a unit that does not
fire, so its incoming weights keep their initialisation, drawn independently (PyTorch's
default is uniform: kurtosis 1.8; a normal draw has 3). A route written onto dormant units
must read the trigger, a few inputs among hundreds, with large weights, and that row is
heavy-tailed: the norm-matched ``weight_surgery`` leaves its hidden route rows' trained
(dead) entries in place and writes the patch's positions, kurtosis 7-30 where the clean
models' dormant rows reach 2.5 (digits) to 6.7 (mnist) at the third largest.

A dead row also keeps its initial *norm*, smaller than a trained one's, while a route must be
as strong as a live unit to move the output. Neither measure alone was enough: the norm
(each dormant row's over the live rows' median) separated the digits surgery but not mnist's,
whose wide hidden layer (784 inputs) barely grows its rows in training (11 of 64 clean
references had a dormant row above the live median); the kurtosis alone was evaded by a
surgery that flattens its rows (``weight_surgery_adaptive``: AUROC 0.817 on digits, at no
cost to the attack). Their product is what a route cannot lower without getting weaker.

Per activation layer of the model's declared feature layer (``Subject.features``):

1. each unit's **activity** is the fraction of the clean samples on which it fires (its
   pre-activation is positive somewhere in its feature map); units at or below
   ``quiet_fraction`` are *dormant*, the others live;
2. each unit's **score** is the kurtosis ``E[z^4]`` of its incoming row (its row of the
   convolution or linear layer that computes it, standardised) times that row's norm over
   the median norm of the layer's live rows;
3. the layer's score is the ``top_units``-th largest among its dormant units (a route is a
   group of units; one odd unit is what a clean model also has); the **statistic** is the
   largest layer score (0 when no layer has that many dormant units), and the suspected
   **target** is the label most clean samples are sent to when that layer's ``top_units``
   highest-scoring dormant units are forced on together (to the largest activation the
   layer reaches on them).

It reconstructs no trigger, so it returns no witness, and it says nothing of backdoors that
clean inputs also drive (data poisoning trains the route on clean data, which keeps it
live): it is built for weight edits, and the leaderboard measures it against every attack.
The attacker's next answer would hold route rows to dead rows' norms as well; a route held so
was too weak to reach the target in the surgery's earlier designs (docs/image_attacks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict, logistic
from auditgame.auditors.calibrated import Calibrated
from auditgame.image.auditors.abs import activation_layers
from auditgame.registry import auditor
from auditgame.subject import Subject

WEIGHTED = (nn.Conv2d, nn.Linear)
NORMS = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class Layer:
    """One activation layer as the clean samples saw it: its qualified ``name``, each unit's
    ``activity``, the ``kurtosis`` and ``norm`` of its incoming row (NaN where no layer
    computes the unit channel by channel), and the largest activation ``peak`` the samples
    reached in it."""

    name: str
    activity: np.ndarray
    kurtosis: np.ndarray
    norm: np.ndarray
    peak: float


def kurtosis(rows: torch.Tensor) -> torch.Tensor:
    """``E[z^4]`` of each row of ``rows`` (flattened per output unit), standardised within the
    row; 0 for a constant row (nothing heavy-tailed about it). Differentiable, so the surgery
    built against this detector (``weight_surgery_adaptive``) fits against the same number."""
    centred = rows.flatten(1) - rows.flatten(1).mean(dim=1, keepdim=True)
    variance = centred.pow(2).mean(dim=1)
    fourth = centred.pow(4).mean(dim=1)
    tiny = torch.finfo(variance.dtype).tiny
    return torch.where(variance > 0, fourth / variance.clamp_min(tiny).pow(2), 0.0)


def profile_units(
    model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor
) -> list[Layer]:
    """Activity, incoming-row kurtosis and norm of every unit of ``layers`` on the samples
    ``x``.

    The layer that computes an activation is the last convolution or linear layer to run
    between it and the previous activation with as many outputs as it has channels. A batch
    norm between the two (in eval mode, with running statistics) is folded into its rows:
    each row is scaled by ``|weight| / sqrt(running_var + eps)``, so the norm is the one the
    unit reads its inputs with (the kurtosis does not change), comparable across channels.
    """
    order: list[tuple[nn.Module, torch.Tensor]] = []
    watched = {id(module) for _, module in layers}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        order.append((module, inputs[0].detach()))

    handles = [
        module.register_forward_hook(record)
        for module in model.modules()
        if isinstance(module, (*WEIGHTED, NORMS)) or id(module) in watched
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()

    result = []
    for name, module in layers:
        at = next((i for i, (m, _) in enumerate(order) if m is module), None)
        if at is None:
            raise ValueError(f"the activation {name} did not run in the model's forward pass")
        pre = order[at][1]
        channels = pre.shape[1]
        fires = (pre.flatten(2) > 0).any(dim=2) if pre.dim() > 2 else pre > 0
        since = max((i for i, (m, _) in enumerate(order[:at]) if id(m) in watched), default=-1)
        between = [m for m, _ in order[since + 1 : at]]
        at_producer = next(
            (i for i in reversed(range(len(between))) if _outputs(between[i]) == channels), None
        )
        with torch.no_grad():
            peak = float(module(pre).max())
        unknown = np.full(channels, np.nan)
        rows = None
        if at_producer is not None:
            rows = _weight(between[at_producer]).detach().flatten(1).double()
            for norm in between[at_producer + 1 :]:
                if isinstance(norm, NORMS) and norm.num_features == channels:
                    rows = rows * _norm_scale(norm).to(rows)[:, None]
        result.append(
            Layer(
                name=name,
                activity=fires.float().mean(0).cpu().numpy().astype(np.float64),
                kurtosis=unknown if rows is None else kurtosis(rows).cpu().numpy(),
                norm=unknown if rows is None else rows.norm(dim=1).cpu().numpy(),
                peak=peak,
            )
        )
    return result


def _norm_scale(norm: nn.modules.batchnorm._BatchNorm) -> torch.Tensor:
    """How much an eval-mode batch norm multiplies each channel: ``|weight| / sqrt(var +
    eps)``; 1 where it keeps no running statistics (it then normalises by the batch's)."""
    if norm.running_var is None or norm.training:
        return torch.ones(norm.num_features, dtype=torch.float64)
    scale = (norm.running_var.detach().double() + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight.detach().double().abs()
    return scale


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _outputs(module: nn.Module) -> int | None:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


@auditor("dormant_units")
class DormantUnits(Calibrated):
    """The largest per-layer ``top_units``-th score (incoming row's kurtosis times its norm
    over the live units' median) of the units clean inputs leave dormant (module docstring).

    Args:
        n_samples: clean samples that measure activity (the first ones of the clean data).
        quiet_fraction: a unit that fires on at most this fraction of them is dormant. The
            norm-matched surgery's mnist routes fire on up to 10% of the clean samples (at
            0.03 one route passed as live); the clean mnist references' statistic is the same
            at 0.03 and 0.1.
        top_units: which largest score of a layer's dormant units is the layer's.
        score_threshold: the statistic at which ``p_violation`` is 0.5 without
            ``calibrate``: above the clean references (64 per family: at most 1.54 on digits,
            4.44 on mnist), below the plain surgery's routes (8.8 and more on digits, 9.8 on
            mnist); the adaptive surgery's digits routes (2.1 and more) are caught only against
            the references.
        slope: steepness of ``p_violation`` in the statistic without ``calibrate``.

    By default the statistic is judged against clean references (``Calibrated``'s parameters).
    """

    access = Access.CLEAN_DATA

    def __init__(
        self,
        *,
        n_samples: int = 1000,
        quiet_fraction: float = 0.1,
        top_units: int = 3,
        score_threshold: float = 5.0,
        slope: float = 2.0,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        if n_samples < 1:
            raise ValueError(f"n_samples must be at least 1, got {n_samples}")
        if not 0 <= quiet_fraction < 1:
            raise ValueError(f"quiet_fraction is a fraction in [0, 1), got {quiet_fraction}")
        if top_units < 1:
            raise ValueError(f"top_units must be at least 1, got {top_units}")
        self.n_samples = n_samples
        self.quiet_fraction = quiet_fraction
        self.top_units = top_units
        self.score_threshold = score_threshold
        self.slope = slope
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        model: nn.Module = subject.model
        data = subject.clean_data
        if len(data) == 0:
            raise ValueError("dormant_units needs at least one clean sample")
        device = next(model.parameters()).device
        x = data.x[: self.n_samples].float().to(device)
        named = activation_layers(model, subject.feature_module)
        layers = profile_units(model, named, x)

        statistic, suspect = 0.0, None
        per_layer = []
        for index, layer in enumerate(layers):
            quiet = layer.activity <= self.quiet_fraction
            live = ~quiet & np.isfinite(layer.norm)
            # Without a live unit to compare with, the norm says nothing: the kurtosis alone.
            scale = float(np.median(layer.norm[live])) if live.any() else np.nan
            ratio = layer.norm / scale if np.isfinite(scale) and scale > 0 else 1.0
            scores = layer.kurtosis * ratio
            dormant = np.flatnonzero(quiet & np.isfinite(scores))
            ranked = dormant[np.argsort(-scores[dormant], kind="stable")]
            score = (
                float(scores[ranked[self.top_units - 1]]) if len(ranked) >= self.top_units else None
            )
            per_layer.append(
                {
                    "layer": layer.name,
                    "units": len(layer.activity),
                    "dormant": int(quiet.sum()),
                    "top_kurtosis": layer.kurtosis[ranked[: self.top_units]].round(3).tolist(),
                    "top_scores": scores[ranked[: self.top_units]].round(3).tolist(),
                    "score": score,
                }
            )
            if score is not None and score > statistic:
                statistic, suspect = score, (index, ranked[: self.top_units].tolist())

        evidence: dict[str, Any] = {"layers": per_layer}
        target = None
        if suspect is not None:
            index, units = suspect
            target = _forced_label(model, named[index][1], units, layers[index].peak, x)
            evidence["suspect"] = {"layer": layers[index].name, "units": units}
        return Verdict(
            p_violation=logistic(self.slope * (statistic - self.score_threshold)),
            target=target,
            evidence=evidence,
            statistic=statistic,
        )


def _forced_label(
    model: nn.Module, module: nn.Module, units: list[int], peak: float, x: torch.Tensor
) -> int:
    """The label most of ``x`` is sent to with ``units`` of ``module``'s output held at
    ``peak`` (their whole feature maps) together: a route works as a group, and one of its
    units alone did not always carry the target (6 of 15 digits routes on 100 samples)."""

    def force(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, units] = peak
        return out

    handle = module.register_forward_hook(force)
    try:
        with torch.no_grad():
            predicted = model(x).argmax(1)
    finally:
        handle.remove()
    return int(torch.bincount(predicted).argmax())
