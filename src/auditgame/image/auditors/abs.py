"""ABS (Liu et al., CCS 2019): find the neurons a trigger drives, then the trigger itself.

A backdoor is learned by a few inner neurons that, once activated by the trigger, raise the
target label whatever else the input shows. Artificial Brain Stimulation looks for such
neurons directly, without optimising per label:

1. **Stimulation.** For each neuron of an inner layer (a channel of a convolutional feature
   map, set as a whole, or a hidden unit), and each of a few clean seed images, the neuron's
   value is forced to ``v`` for ``v`` in ``stimulation * max_activation`` (the layer's largest
   activation on the seeds) and the logits are read. A label's *elevation* is its largest
   logit over ``v > 0`` minus its logit at ``v = 0``; per image the neuron elevates the label
   with the largest elevation, by its margin over the second.
2. **Compromised neuron candidates.** A neuron that elevates the same label for at least
   ``label_consistency`` of the images (and for all of them in the paper's spirit: its score
   is the *smallest* margin over the images of other labels) behaves like a trojan neuron.
   The ``top_neurons`` best, at most ``neurons_per_label`` per label, are candidates.
3. **Reverse engineering.** For each candidate a mask and pattern are optimised to maximise
   that neuron's activation (before and after its nonlinearity) while barely moving the other
   neurons of its layer, with a mask-size bound: the L1 penalty is weak (0.01) below
   ``max_trigger_fraction`` of the image and strong above it (``mask_weight``, doubled above
   1.2 times the bound). In the paper the label never enters the objective; the authors'
   later code (TrojAI round 1) also raises the candidate label's logit, and so does
   ``label_weight`` here: on digits the strongest candidates are first-layer channels, whose
   stimulation sets a whole 8x8 feature map while a trigger drives one position of it, and
   from the neuron alone their reconstructions reached a REASR of 0 to 0.01 on the planted
   one-pixel badnets organism, against 1.0 with the label term.
4. **Confirmation.** Each reconstructed trigger is stamped on all the clean samples; its
   label is the most frequent prediction and its REASR the fraction of samples of other
   labels sent there. ``p_violation = logistic(slope * (max REASR - reasr_threshold))``, and
   the best trigger is the witness.

Neurons are found with forward hooks on the activation modules (``nn.ReLU`` and its kin)
inside the model's declared feature layer (``Subject.features``: ``features`` in the image
families, ``feature_layer`` in a user's spec file), so nothing depends on one architecture's
layer list. On digits' ``SmallCNN`` these are the outputs of
the two convolutions (16 and 32 channels of 8x8) and of the hidden layer (64 units).
Candidates of all layers are reverse-engineered together in one batch, each on its own rows.
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
from auditgame.image.auditors.neural_cleanse import from_unit, to_unit
from auditgame.image.kind import mask_bound, within_threat
from auditgame.image.trigger import Trigger
from auditgame.registry import auditor
from auditgame.subject import Subject

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU)


@dataclass(frozen=True)
class Candidate:
    """A compromised-neuron candidate: ``layer`` (index into the stimulated layers),
    ``channel``, the ``label`` it elevates and its ``score`` (smallest margin)."""

    layer: int
    channel: int
    label: int
    score: float


def activation_layers(model: nn.Module, features: nn.Module) -> list[tuple[str, nn.Module]]:
    """The activation modules inside ``features`` (the model's declared feature layer,
    ``Subject.features``), in order, by their qualified names in ``model``."""
    prefix = next((name for name, m in model.named_modules() if m is features), None)
    if prefix is None:
        raise ValueError("ABS: the declared feature layer is not a module of the model")
    layers: list[tuple[str, nn.Module]] = [
        (f"{prefix}.{n}" if prefix else n, m)
        for n, m in features.named_modules()
        if isinstance(m, ACTIVATIONS)
    ]
    if not layers:
        raise ValueError("found no activation module (ReLU, GELU, ...) inside the feature layer")
    return layers


def _layer_output(model: nn.Module, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``module`` outputs while ``model`` runs on ``x``."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return captured[0]


def _forcing(channel: torch.Tensor, value: torch.Tensor) -> Any:
    """A forward hook that sets row ``i``'s neuron ``channel[i]`` (a whole feature map, or one
    unit) to ``value[i]``."""

    def force(_m: nn.Module, _i: Any, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        rows = torch.arange(len(out), device=out.device)
        shape = (len(out),) + (1,) * (out.dim() - 2)
        out[rows, channel] = value.view(shape).expand_as(out[rows, channel])
        return out

    return force


@auditor("abs")
class ABS(Calibrated):
    """Artificial Brain Stimulation on the activation layers of the model's feature layer.

    Args:
        n_seed_images: clean images used to stimulate neurons and to reverse-engineer.
        stimulation: multiples of the layer's largest seed activation to force a neuron to;
            the first value must be 0 (the baseline the elevation is measured from).
        label_consistency: fraction of seed images on which a neuron must elevate the same
            label to be a candidate (paper's code: 0.9).
        top_neurons: candidates to reverse-engineer.
        neurons_per_label: at most this many candidates per elevated label.
        max_trigger_fraction: the mask-size bound, as a fraction of the image (0.08: 5.1
            pixels of 8x8), never beyond the spec's own (``max_mask_l1``); the masks are
            confirmed, and the witness returned, projected into the spec's bound.
        steps: Adam steps of the reverse engineering (full batch of seed images).
        lr: Adam learning rate on the tanh-space mask and pattern.
        mask_weight: the L1 penalty's weight above the bound.
        label_weight: weight of the candidate label's mean logit in the objective (0: the
            paper's neuron-only objective).
        reasr_threshold: REASR at which ``p_violation`` is 0.5. Chosen on the auditor's own
            digits shadow zoo (``fitting.shadow_zoo``, n 32, fit seed 0): the 16 clean models
            reached at most 0.42, the 16 jumbo-backdoored ones at least 0.77.
        slope: steepness of ``p_violation`` in REASR.

    The statistic is the largest REASR (0 when no neuron is a candidate); ``reasr_threshold``
    and ``slope`` are the rule without ``calibrate``: by default it is judged against clean
    references (``Calibrated``'s parameters), because the threshold chosen on digits flagged
    11 of 50 clean mnist organisms.
    """

    access = Access.CLEAN_DATA

    def __init__(
        self,
        *,
        n_seed_images: int = 20,
        stimulation: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0),
        label_consistency: float = 0.9,
        top_neurons: int = 10,
        neurons_per_label: int = 2,
        max_trigger_fraction: float = 0.08,
        steps: int = 100,
        lr: float = 0.1,
        mask_weight: float = 50.0,
        label_weight: float = 1.0,
        reasr_threshold: float = 0.6,
        slope: float = 12.0,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        if not stimulation or stimulation[0] != 0.0 or len(stimulation) < 2:
            raise ValueError(
                f"stimulation must start at 0 (the baseline) and have another value, "
                f"got {stimulation}"
            )
        self.n_seed_images = n_seed_images
        self.stimulation = tuple(float(v) for v in stimulation)
        self.label_consistency = label_consistency
        self.top_neurons = top_neurons
        self.neurons_per_label = neurons_per_label
        self.max_trigger_fraction = max_trigger_fraction
        self.steps = steps
        self.lr = lr
        self.mask_weight = mask_weight
        self.label_weight = label_weight
        self.reasr_threshold = reasr_threshold
        self.slope = slope
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        model: nn.Module = subject.model
        data = subject.clean_data
        if len(data) == 0:
            raise ValueError("ABS needs at least one clean sample")
        device = next(model.parameters()).device
        x_all, y_all = data.x.float().to(device), data.y.long().to(device)
        seeds_x, seeds_y = x_all[: self.n_seed_images], y_all[: self.n_seed_images]
        layers = activation_layers(model, subject.feature_module)
        n_labels = len(subject.card.classes)

        candidates = self.stimulate(model, layers, seeds_x, seeds_y, n_labels)
        evidence: dict[str, Any] = {
            "layers": [name for name, _ in layers],
            "candidates": [
                {
                    "layer": layers[c.layer][0],
                    "channel": c.channel,
                    "label": c.label,
                    "score": c.score,
                }
                for c in candidates
            ],
        }
        out_of_time = subject.elapsed > budget.seconds
        if not candidates or out_of_time:
            # No neuron to confirm: a REASR of 0, and no witness.
            evidence |= {"reasr": [], "max_reasr": 0.0, "stopped_early": out_of_time}
            return Verdict(
                p_violation=logistic(-self.slope * self.reasr_threshold),
                evidence=evidence,
                statistic=0.0,
            )

        masks, patterns = self.reverse_engineer(
            model, layers, candidates, seeds_x, rng, subject, budget
        )
        # Confirmed as the spec would check them: inside its bound (``project``).
        threat = subject.card.spec.threat_model
        soft_l1 = [float(m.sum()) for m in masks]
        masks = np.stack(
            [
                within_threat(threat, Trigger(m, p)).mask
                for m, p in zip(masks, patterns, strict=True)
            ]
        )
        reasr, targets = self.confirm(model, masks, patterns, x_all, y_all, n_labels)
        best = int(np.argmax(reasr))
        evidence |= {
            "reasr": [float(v) for v in reasr],
            "reasr_label": [int(v) for v in targets],
            "max_reasr": float(reasr[best]),
            "trigger_l1": [float(m.sum()) for m in masks],
            "soft_trigger_l1": soft_l1,
            "stopped_early": subject.elapsed > budget.seconds,
        }
        return Verdict(
            p_violation=logistic(self.slope * (float(reasr[best]) - self.reasr_threshold)),
            target=int(targets[best]),
            trigger=Trigger(masks[best], patterns[best]),
            evidence=evidence,
            statistic=float(reasr[best]),
        )

    def stimulate(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        x: torch.Tensor,
        y: torch.Tensor,
        n_labels: int,
    ) -> list[Candidate]:
        """Stimulate every neuron of every layer; return the ranked candidates."""
        found: list[Candidate] = []
        n_values, n_images = len(self.stimulation), len(x)
        for index, (_, module) in enumerate(layers):
            base = _layer_output(model, module, x)
            values = torch.as_tensor(self.stimulation, device=x.device) * base.max().clamp(min=1e-6)
            n_neurons = base.shape[1]
            # One batch per neuron chunk: rows are (neuron, value, image), the hook overwrites
            # the neuron's whole channel with the value on its rows.
            logits = []
            chunk = max(1, 4096 // (n_values * n_images))
            for start in range(0, n_neurons, chunk):
                neurons = torch.arange(start, min(start + chunk, n_neurons), device=x.device)
                rows_channel = neurons.repeat_interleave(n_values * n_images)
                rows_value = values.repeat_interleave(n_images).repeat(len(neurons))

                handle = module.register_forward_hook(_forcing(rows_channel, rows_value))
                with torch.no_grad():
                    batch = x.repeat(len(neurons) * n_values, *([1] * (x.dim() - 1)))
                    logits.append(model(batch).view(len(neurons), n_values, n_images, n_labels))
                handle.remove()
            out = torch.cat(logits).cpu().numpy()  # (neuron, value, image, label)
            elevation = out[:, 1:].max(axis=1) - out[:, 0]  # (neuron, image, label)
            ranked = np.sort(elevation, axis=2)
            margin = ranked[..., -1] - ranked[..., -2]  # (neuron, image)
            top = elevation.argmax(axis=2)  # (neuron, image)
            labels_np = y.cpu().numpy()
            for neuron in range(n_neurons):
                counts = np.bincount(top[neuron], minlength=n_labels)
                label = int(counts.argmax())
                if counts[label] < self.label_consistency * n_images:
                    continue
                keep = (top[neuron] == label) & (labels_np != label)
                if not keep.any():
                    continue
                found.append(Candidate(index, neuron, label, float(margin[neuron][keep].min())))
        found.sort(key=lambda c: -c.score)
        chosen: list[Candidate] = []
        per_label: dict[int, int] = {}
        for c in found:
            if per_label.get(c.label, 0) < self.neurons_per_label:
                chosen.append(c)
                per_label[c.label] = per_label.get(c.label, 0) + 1
            if len(chosen) == self.top_neurons:
                break
        return chosen

    def reverse_engineer(
        self,
        model: nn.Module,
        layers: list[tuple[str, nn.Module]],
        candidates: list[Candidate],
        x: torch.Tensor,
        rng: np.random.Generator,
        subject: Subject,
        budget: Budget,
    ) -> tuple[np.ndarray, np.ndarray]:
        """A mask and pattern per candidate that drive its neuron, within the size bound."""
        n_cand, n_images = len(candidates), len(x)
        channels, height, width = x.shape[1:]
        # Its own bound, never beyond the spec's: a larger trigger would not be a witness.
        bound = min(
            self.max_trigger_fraction * height * width,
            mask_bound(subject.card.spec.threat_model),
        )
        # ABS starts from a small square in the middle of the image, its side 0.8 * sqrt(bound).
        side = max(1, int(0.8 * np.sqrt(bound)))
        start = np.full((n_cand, 1, height, width), 0.02)
        r0, c0 = (height - side) // 2, (width - side) // 2
        start[:, :, r0 : r0 + side, c0 : c0 + side] = 0.98
        mask_raw = from_unit(start).to(x.device).requires_grad_(True)
        pattern_raw = from_unit(rng.uniform(0, 1, size=(n_cand, channels, height, width)))
        pattern_raw = pattern_raw.to(x.device).requires_grad_(True)
        optimiser = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr)

        captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def capture(index: int) -> Any:
            def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                captured[index] = (inputs[0], out)

            return hook

        used = sorted({c.layer for c in candidates})
        handles = [layers[i][1].register_forward_hook(capture(i)) for i in used]
        try:
            for _ in range(self.steps):
                if subject.elapsed > budget.seconds:
                    break
                mask, pattern = to_unit(mask_raw), to_unit(pattern_raw)
                stamped = (1 - mask[:, None]) * x[None] + (mask * pattern)[:, None]
                logits = model(stamped.reshape(n_cand * n_images, channels, height, width))
                loss = torch.zeros((), device=x.device)
                for k, c in enumerate(candidates):
                    pre, post = captured[c.layer]
                    rows = slice(k * n_images, (k + 1) * n_images)
                    loss = loss + self._neuron_loss(pre[rows], post[rows], c.channel)
                    loss = loss - self.label_weight * logits[rows, c.label].mean()
                l1 = mask.sum(dim=(1, 2, 3))
                weight = torch.where(
                    l1 > 1.2 * bound,
                    2 * self.mask_weight,
                    torch.where(l1 > bound, self.mask_weight, 0.01),
                )
                loss = loss + (weight * l1).sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        finally:
            for handle in handles:
                handle.remove()
        with torch.no_grad():
            masks = to_unit(mask_raw)[:, 0].cpu().numpy()
            patterns = to_unit(pattern_raw).cpu().numpy()
        return masks, patterns

    @staticmethod
    def _neuron_loss(pre: torch.Tensor, post: torch.Tensor, channel: int) -> torch.Tensor:
        """Raise the neuron before and after its nonlinearity; keep the others (1e-4) low."""
        others = torch.ones(pre.shape[1], dtype=torch.bool, device=pre.device)
        others[channel] = False
        return (
            -pre[:, channel].mean()
            - post[:, channel].mean()
            + 1e-4 * (pre[:, others].mean() + post[:, others].mean())
        )

    def confirm(
        self,
        model: nn.Module,
        masks: np.ndarray,
        patterns: np.ndarray,
        x: torch.Tensor,
        y: torch.Tensor,
        n_labels: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """REASR of each trigger on the clean samples, and the label it sends them to."""
        reasr = np.zeros(len(masks))
        targets = np.zeros(len(masks), dtype=int)
        with torch.no_grad():
            for k in range(len(masks)):
                stamped = Trigger(masks[k], patterns[k]).apply(x)
                predicted = model(stamped).argmax(dim=1)
                target = int(torch.bincount(predicted, minlength=n_labels).argmax())
                other = y != target
                reasr[k] = (
                    float((predicted[other] == target).float().mean()) if other.any() else 0.0
                )
                targets[k] = target
        return reasr, targets
