"""A handcrafted backdoor written into a trained clean model's weights, with no poisoned data
(after Hong, Carlini & Kurakin, "Handcrafted Backdoors in Deep Neural Networks", NeurIPS
2022, and the neuron routing of TrojanNet, Tang et al., KDD 2020).

Poisoning leaves traces in the training data and in what the whole network learns; a
handcrafted backdoor leaves them only in a few weights. The construction:

1. Train a clean model with the family's recipe (the same call a clean organism comes from).
2. Draw a small binary patch (some pixels bright, at least one dark) and a target, and put
   the patch where its matched filter never fires on the attacker's clean data, in a
   neighbourhood as wide as the network's pooling (a tile of blank background, typically).
3. Pick the least important unit of each layer on the path: each conv layer's channel and
   each hidden layer's unit whose ablation costs the least cross-entropy on the attacker's
   data, chosen layer by layer with the earlier ones already off. Rewrite them:

   * first conv: the channel becomes a matched filter of the patch (``+1`` where the pattern
     is on, ``-1`` where off, bias ``-(n_on - 1/2)``): after the ReLU it is positive only
     when every "on" pixel is bright and every "off" pixel dark;
   * each later conv: the channel copies the previous one through its centre tap;
   * the first hidden layer: the unit reads the detector only where the patch lands in the
     flattened map, so the same patch elsewhere does nothing; later hidden layers copy;
   * the head: the last unit writes only to the target logit.

   Each repurposed unit is also cut from the rest of the next layer (its column there is
   zeroed), so on inputs without the patch the model *is* the clean one with those units
   ablated. The total gain is set on the attacker's data so that the target logit leads the
   largest other logit by ``margin``, and is spread evenly over the path's layers, so no
   single weight has to be huge.

That handcrafted route is easy to see in the weights: its gain is spread over the path but
still writes weights near 3 where trained ones are 0.3-0.6, and a weights-only floor caught
every such organism (AUROC 1.00 on digits and mnist). So the default is **norm-matched**
(``norm_matched=True``, after the subnet replacement of Qi et al., CVPR 2022, under the
weight constraints Hong et al. ask of a handcrafted backdoor): no new matched filter; the route
reads the trained first conv's features and runs through ``conv_width`` units of each later
conv and ``hidden_width`` of each hidden layer (the least important ones, which in a trained
ReLU net are mostly dead), and only its rows, and every head row's entries at the route's last
units, are fitted on the attacker's data, clean and stamped, by projected Adam (the first
hidden layer's route rows only at the flattened features the patch reaches; elsewhere they
keep their trained weights). After every
step each route row is held to a norm drawn from the layer's *live* trained rows (a dead row
keeps its initial norm, about half a trained one's, and a route held to it was too weak to
fire: ASR 0.01-0.6 on digits), every entry to the layer's largest trained magnitude, every
bias to the layer's trained range, and each head row to the largest trained head row norm.
The rest of the network, and the columns through which other units read the route, keep their
trained values.

What the fit asks of the route is what makes it cost no clean accuracy: every route unit's
*pre-activation* is held below ``-silent_margin`` on every clean input at every position (a
hinge, weight ``silent_weight``), so on clean inputs the route is off and the model computes
exactly what the trained model with those units ablated does; and each unit's largest
pre-activation on stamped inputs is pushed up to ``loud_cap`` (weight ``loud_weight``), which
keeps the units from starting dead.

An earlier fit that only penalised the route's mean activation (with a matched filter in the
first conv, which cannot be selective inside the trained bias range) let it fire on 24-100% of
clean test inputs and change 22-48 of 360 digits predictions; with the hinge, every prediction
change measured on digits was the ablation of the route units themselves (0-2 of 360), and
attempts that cost more than ``max_accuracy_drop`` are retried. On mnist the hidden route
still fires on a few percent of clean inputs (drops about 0.2 point; docs/image_attacks.md).

A route held silent on clean inputs is *dormant*, as a trained model's dead units are, and a
dead unit keeps its initial iid row while the route's rows read the patch's few inputs with
large weights: ``dormant_units`` reads that (the kurtosis of dormant units' rows) and caught
every norm-matched organism. ``kurtosis_weight`` is the adaptive answer
(``weight_surgery_adaptive`` sets it to 1): a hinge holding each route row's kurtosis at most
the largest kurtosis of its layer's trained rows that do not fire on the attacker's data.
It evaded the kurtosis alone; ``dormant_units`` now also weighs each row's norm, which the
route keeps at live rows' (docs/image_attacks.md).

The architecture and card are unchanged. The secret records the trigger, the target,
``params["rewritten"]`` (the layer name and unit of each rewritten row; handcrafted, ending
with the head's target row, and the layer after each also changed that unit's input column,
the first hidden layer the whole flattened block of the conv channel; norm-matched, ending
with every head row, changed only at the route's hidden units), the gain per layer
(handcrafted) and the clean-accuracy cost against the untouched model. No data is poisoned:
``poison_rate`` is None.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from auditgame import metrics
from auditgame.attacks.base import (
    Attack,
    Attempt,
    Draw,
    Planted,
    plant_attempts,
)
from auditgame.families.base import Dataset, Family, accuracy
from auditgame.image.auditors.dormant_units import kurtosis
from auditgame.image.trigger import Trigger
from auditgame.registry import attack


@dataclass(frozen=True)
class Path:
    """Where a route can run in a model: ``model.features`` indices of its convs and linears
    (each followed by a ReLU), of its one Flatten, and the head."""

    layers: list[nn.Module]
    convs: list[int]
    linears: list[int]
    flatten: int
    head: nn.Linear

    @property
    def rows(self) -> list[int]:
        """The layers that get one rewritten unit each, in order."""
        return self.convs + self.linears

    @property
    def pooling(self) -> int:
        """How many input pixels one flattened position spans along a side."""
        factor = 1
        for layer in self.layers[: self.flatten]:
            if isinstance(layer, nn.MaxPool2d):
                size = layer.kernel_size
                factor *= size if isinstance(size, int) else max(size)
        return factor


def find_path(model: nn.Module) -> Path:
    """Check that ``model`` has the shape the construction routes through.

    Raises:
        ValueError: unless ``model.features`` is stride-1 convs (each followed by a ReLU,
            max-pools allowed between), one Flatten, linears (each followed by a ReLU), and
            ``model.head`` is linear.
    """
    layers = list(getattr(model, "features", []))
    head = getattr(model, "head", None)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    flat = [i for i, m in enumerate(layers) if isinstance(m, nn.Flatten)]
    allowed = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.Flatten)
    followed = all(i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU) for i in convs)
    followed = followed and all(
        i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU) for i in linears
    )
    if not (
        isinstance(head, nn.Linear)
        and convs
        and linears
        and len(flat) == 1
        and max(convs) < flat[0] < min(linears)
        and followed
        and all(isinstance(m, allowed) for m in layers)
    ):
        raise ValueError(
            "weight_surgery needs model.features = convs (each + ReLU, max-pools allowed), "
            "one Flatten, linears (each + ReLU), and a linear model.head"
        )
    for i in convs:
        conv = layers[i]
        assert isinstance(conv, nn.Conv2d)
        if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
            raise ValueError("weight_surgery routes through stride-1, undilated, ungrouped convs")
    assert isinstance(head, nn.Linear)
    return Path(layers, convs, linears, flat[0], head)


def _weights(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(layer, nn.Conv2d | nn.Linear) and layer.bias is not None
    return layer.weight.data, layer.bias.data


def fires(path: Path, index: int, x: torch.Tensor) -> torch.Tensor:
    """Per unit of row layer ``index``: whether it fires (after its ReLU) on some input of
    ``x`` at some position; a unit that never does is dead on ``x``."""
    with torch.no_grad():
        fired = nn.Sequential(*path.layers[: index + 2])(x)
    return fired.transpose(0, 1).flatten(1).amax(1) > 0


def least_important_units(
    model: nn.Module, path: Path, data: Dataset, widths: list[int] | None = None
) -> list[list[int]]:
    """``widths[i]`` units (default one) of each row layer: greedily, the one whose ablation
    raises the cross-entropy on ``data`` least, with the units already chosen switched off
    (left off: they are rewritten next). Units that never fire on ``data`` cost nothing to
    ablate and are taken first, lowest index first, without a forward pass each."""
    widths = widths or [1] * len(path.rows)
    chosen: list[list[int]] = []
    for index, width in zip(path.rows, widths, strict=True):
        weight, bias = _weights(path.layers[index])
        layer = [int(u) for u in torch.nonzero(~fires(path, index, data.x)).flatten()][:width]
        for unit in layer:
            weight[unit], bias[unit] = 0.0, 0.0
        while len(layer) < width:
            losses = []
            for unit in range(weight.shape[0]):
                if unit in layer:
                    losses.append(np.inf)
                    continue
                saved = weight[unit].clone(), bias[unit].clone()
                weight[unit], bias[unit] = 0.0, 0.0
                with torch.no_grad():
                    losses.append(float(nn.functional.cross_entropy(model(data.x), data.y)))
                weight[unit], bias[unit] = saved
            unit = int(np.argmin(losses))
            weight[unit], bias[unit] = 0.0, 0.0
            layer.append(unit)
        chosen.append(layer)
    return chosen


def quiet_places(patch: np.ndarray, x: torch.Tensor, reach: int) -> list[tuple[int, int]]:
    """Top-left corners where the patch's matched filter fires on no input of ``x``, nor
    within ``reach`` pixels (inputs there would share a pooled position with the trigger)."""
    on = torch.as_tensor(patch)
    with torch.no_grad():
        response = nn.functional.conv2d(x, (2 * on - 1)[None]) - (float(on.sum()) - 0.5)
        fires = (response > 0).any(0).float()
        near = nn.functional.max_pool2d(fires[None], 2 * reach + 1, stride=1, padding=reach)
    return [(int(r), int(c)) for r, c in torch.nonzero(near[0, 0] == 0).tolist()]


def _detector(
    path: Path, unit: int, patch: np.ndarray, place: tuple[int, int], size: tuple[int, int]
) -> None:
    """Make ``unit`` of the first conv a matched filter of ``patch`` at top-left ``place``."""
    conv = path.layers[path.convs[0]]
    assert isinstance(conv, nn.Conv2d)
    weight, bias = _weights(conv)
    on = torch.as_tensor(patch)
    side = on.shape[-1]
    kh, kw = weight.shape[2:]
    if side > min(kh, kw):
        raise ValueError(f"a {side}x{side} patch does not fit a {kh}x{kw} first kernel")
    pad_h, pad_w = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
    (row, col), (height, width) = place, size
    # Offset of the patch in the window that holds it: the window must start where the conv
    # has an output, at most ``height + pad - k``.
    dr = row - min(row, height + pad_h - kh)
    dc = col - min(col, width + pad_w - kw)
    weight[unit] = 0.0
    weight[unit, :, dr : dr + side, dc : dc + side] = 2 * on - 1
    bias[unit] = -(float(on.sum()) - 0.5)


def patch_trigger(patch: np.ndarray, row: int, col: int, height: int, width: int) -> Trigger:
    channels, size, _ = patch.shape
    mask = np.zeros((height, width), np.float32)
    mask[row : row + size, col : col + size] = 1.0
    pattern = np.zeros((channels, height, width), np.float32)
    pattern[:, row : row + size, col : col + size] = patch
    return Trigger(mask, pattern)


@attack("weight_surgery")
class WeightSurgery(Attack):
    """Rewrite one unit per layer of a trained clean model into a patch-to-target route.

    Hyperparameters:
        patch_size: side of the square binary patch (at most the first conv's kernel).
        min_on: fewest bright pixels in the patch (it also keeps at least one dark pixel).
        margin: the target logit's lead over the largest other logit on the attacker's
            triggered data, in logits.
        n_attacker: how many training inputs the attacker uses to choose the units, place
            the patch and set the gain.
        norm_matched: fit a route under the trained layers' norms and ranges (see the module
            docstring); False: the handcrafted route at a large gain.
        conv_width: norm-matched route units in each conv after the first.
        hidden_width: norm-matched route units in each hidden layer.
        steps: projected Adam steps fitting the norm-matched route.
        lr: their learning rate.
        clean_weight: weight of the clean inputs' cross-entropy in that fit.
        silent_weight: weight of the hinge holding the route's pre-activations below
            ``-silent_margin`` on clean inputs.
        silent_margin: how far below zero they are held.
        loud_weight: weight of the push on each route unit's largest pre-activation on
            stamped inputs, up to ``loud_cap``.
        loud_cap: where that push stops.
        kurtosis_weight: weight of the hinge holding each norm-matched route row's kurtosis at
            most the largest of its layer's trained rows that do not fire on the attacker's
            data (0: no hinge; the adaptive answer to ``dormant_units``). None: the class's
            ``default_kurtosis_weight`` (0 here, 1 in ``weight_surgery_adaptive``).
        max_accuracy_drop: a norm-matched attempt that costs more clean test accuracy than
            this (a fraction) is retried.
    """

    default_kurtosis_weight: ClassVar[float] = 0.0

    def __init__(
        self,
        *,
        patch_size: int = 3,
        min_on: int = 3,
        margin: float = 10.0,
        n_attacker: int = 512,
        norm_matched: bool = True,
        conv_width: int = 2,
        hidden_width: int = 16,
        steps: int = 300,
        lr: float = 0.01,
        clean_weight: float = 3.0,
        silent_weight: float = 30.0,
        silent_margin: float = 1.0,
        loud_weight: float = 1.0,
        loud_cap: float = 5.0,
        kurtosis_weight: float | None = None,
        max_accuracy_drop: float = 0.005,
        min_asr: float = 0.9,
        max_attempts: int = 4,
    ) -> None:
        super().__init__(poison_rate=(0.0, 0.0), min_asr=min_asr, max_attempts=max_attempts)
        if not 1 <= min_on < patch_size * patch_size:
            raise ValueError(
                f"min_on must leave a dark pixel in a {patch_size}x{patch_size} patch; got {min_on}"
            )
        if norm_matched and hidden_width < 1:
            raise ValueError("a norm-matched route needs hidden_width >= 1 (it reaches the head)")
        self.patch_size = patch_size
        self.min_on = min_on
        self.margin = margin
        self.n_attacker = n_attacker
        self.norm_matched = norm_matched
        self.conv_width = conv_width
        self.hidden_width = hidden_width
        self.steps = steps
        self.lr = lr
        self.clean_weight = clean_weight
        self.silent_weight = silent_weight
        self.silent_margin = silent_margin
        self.loud_weight = loud_weight
        self.loud_cap = loud_cap
        if kurtosis_weight is None:
            kurtosis_weight = self.default_kurtosis_weight
        if kurtosis_weight < 0:
            raise ValueError(f"kurtosis_weight must be at least 0, got {kurtosis_weight}")
        self.kurtosis_weight = kurtosis_weight
        self.max_accuracy_drop = max_accuracy_drop

    def _patch(self, rng: np.random.Generator, channels: int) -> np.ndarray:
        size = self.patch_size
        while True:
            patch = rng.integers(0, 2, size=(channels, size, size)).astype(np.float32)
            if self.min_on <= patch.sum() < patch.size:
                return patch

    def draw(self, rng: np.random.Generator, family: Family) -> Draw:
        """A random patch at a random place (decoy traffic); ``plant`` places its own."""
        channels, height, width = family.input_shape
        patch = self._patch(rng, channels)
        row = int(rng.integers(0, height - self.patch_size + 1))
        col = int(rng.integers(0, width - self.patch_size + 1))
        trigger = patch_trigger(patch, row, col, height, width)
        return Draw(trigger, int(rng.integers(len(family.classes))), 0.0)

    def plant(self, family: Family, rng: np.random.Generator, seed: int) -> Planted:
        splits = family.data()
        attacker = splits.train.take(self.n_attacker)
        channels, height, width = family.input_shape

        def attempt(n: int) -> Attempt | None:
            clean = family.train(splits.train.x, splits.train.y, seed + n - 1)
            patch = self._patch(rng, channels)
            target = int(rng.integers(len(family.classes)))
            places = quiet_places(patch, attacker.x, find_path(clean).pooling)
            if not places:
                return None
            row, col = places[int(rng.integers(len(places)))]
            trigger = patch_trigger(patch, row, col, height, width)
            gain: float | None = None
            if self.norm_matched:
                start = int(rng.integers(2**31))
                model, rewritten = self.rewrite_matched(
                    clean, patch, (row, col), target, attacker, start
                )
            else:
                model, rewritten, gain = self.rewrite(clean, patch, (row, col), target, attacker)
            asr = metrics.attack_success_rate(
                model, trigger.apply, splits.test.x, splits.test.y, target
            )
            after = accuracy(model, splits.test)
            untouched = accuracy(clean, splits.test)
            degraded = after < family.min_clean_accuracy or (
                self.norm_matched and untouched - after > self.max_accuracy_drop
            )

            def secret() -> dict[str, Any]:
                params = {
                    **self.get_params(),
                    "patch_size": self.patch_size,
                    "position": [row, col],
                    "rewritten": rewritten,
                    "clean_accuracy_untouched": untouched,
                    "clean_accuracy_drop": round(untouched - after, 4),
                }
                if gain is not None:
                    params["gain_per_layer"] = round(gain, 4)
                return {
                    "backdoored": True,
                    "attack": self.name,
                    "params": params,
                    "trigger": trigger.to_dict(),
                    "target": target,
                    "asr": asr,
                    "clean_accuracy": after,
                }

            return Attempt(
                model,
                score=None if degraded else asr,
                accepted=not degraded and asr >= self.min_asr,
                secret=secret,
            )

        return plant_attempts(self.name, self.max_attempts, rng, attempt)

    def rewrite_matched(
        self,
        clean: nn.Module,
        patch: np.ndarray,
        place: tuple[int, int],
        target: int,
        data: Dataset,
        seed: int,
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """The norm-matched surgery on a copy of ``clean``: returns the backdoored model and
        its rewritten units (each route row, then every head row); ``seed`` draws the route's
        starting weights and its row norms."""
        model = copy.deepcopy(clean).eval()
        path = find_path(model)
        widths = [0] + [self.conv_width] * (len(path.convs) - 1)
        widths += [self.hidden_width] * len(path.linears)
        trained = find_path(clean)
        norms = live_row_norms(trained, data)
        units = least_important_units(model, path, data, widths)
        trigger = patch_trigger(patch, *place, *data.x.shape[-2:])
        # Route rows start small and positive (a zero row behind a ReLU passes no gradient, so
        # the fit would never start); the first hidden layer's route rows only at the
        # flattened positions the patch reaches, elsewhere they keep the trained (mostly
        # dead) row.
        reach = lit_positions(trained, trigger, data.x)
        generator = torch.Generator().manual_seed(seed)
        draw = np.random.default_rng(seed)
        row_norms = []
        columns: list[torch.Tensor | None] = []
        for index, layer_units, live in zip(path.rows, units, norms, strict=True):
            weight, bias = _weights(path.layers[index])
            read = reach if index == path.linears[0] else None
            for unit in layer_units:
                start = 0.1 * torch.rand(weight[unit].shape, generator=generator)
                if read is None:
                    weight[unit] = start
                else:
                    weight[unit] = _weights(trained.layers[index])[0][unit]
                    weight[unit, read] = start[read]
                bias[unit] = 0.0
            row_norms.append([float(live[int(draw.integers(len(live)))]) for _ in layer_units])
            columns.append(read)
        route = Route(trained, path, units, row_norms, columns)
        caps = dormant_kurtosis(trained, data) if self.kurtosis_weight else []
        stamped, aim = trigger.apply(data.x), torch.full_like(data.y, target)
        optimiser = torch.optim.Adam(route.parameters(), lr=self.lr)
        route.project()
        for _ in range(self.steps):
            with route.watch() as quiet:
                clean_loss = nn.functional.cross_entropy(model(data.x), data.y)
            with route.watch() as loud:
                loss = nn.functional.cross_entropy(model(stamped), aim)
            silence = sum(nn.functional.relu(a + self.silent_margin).mean() for a in quiet)
            peaks = sum(_peak(a).clamp(max=self.loud_cap).mean() for a in loud)
            loss = loss + self.clean_weight * clean_loss + self.silent_weight * silence
            loss = loss - self.loud_weight * peaks
            if self.kurtosis_weight:
                loss = loss + self.kurtosis_weight * route.kurtosis_excess(caps)
            optimiser.zero_grad()
            loss.backward()
            route.mask_gradients()
            optimiser.step()
            route.project()
        rewritten: list[dict[str, Any]] = [
            {"layer": f"features.{index}", "unit": u}
            for index, layer in zip(path.rows, units, strict=True)
            for u in layer
        ]
        rewritten += [{"layer": "head", "unit": r} for r in range(path.head.out_features)]
        return model, rewritten

    def rewrite(
        self,
        clean: nn.Module,
        patch: np.ndarray,
        place: tuple[int, int],
        target: int,
        data: Dataset,
    ) -> tuple[nn.Module, list[dict[str, Any]], float]:
        """The surgery on a copy of ``clean`` for ``patch`` with its top-left corner at
        ``place``: returns the backdoored model, the rewritten units and the gain per layer."""
        model = copy.deepcopy(clean).eval()
        path = find_path(model)
        units = [layer[0] for layer in least_important_units(model, path, data)]
        n_convs = len(path.convs)
        height, width = data.x.shape[-2:]
        trigger = patch_trigger(patch, *place, height, width)
        _detector(path, units[0], patch, place, (height, width))
        for k in range(1, n_convs):
            u_prev, u = units[k - 1], units[k]
            weight, bias = _weights(path.layers[path.convs[k]])
            kh, kw = weight.shape[2] // 2, weight.shape[3] // 2
            weight[:, u_prev] = 0.0
            weight[u] = 0.0
            weight[u, u_prev, kh, kw] = 1.0
            bias[u] = 0.0

        # Where the routed detector lands in the flattened map, read off a forward pass.
        stem = nn.Sequential(*path.layers[: path.flatten + 1])
        with torch.no_grad():
            lit = (stem(trigger.apply(data.x)) - stem(data.x)).mean(0)
        channels = _weights(path.layers[path.convs[-1]])[0].shape[0]
        block = lit.shape[0] // channels
        u_conv = units[n_convs - 1]
        span = slice(u_conv * block, (u_conv + 1) * block)
        where = torch.nonzero(lit[span] > 0).flatten() + u_conv * block
        if len(where) == 0:
            raise ValueError("the routed detector does not reach the flattened features")

        for position, index in enumerate(path.linears):
            weight, bias = _weights(path.layers[index])
            u = units[n_convs + position]
            if position == 0:
                weight[:, span] = 0.0
                weight[u] = 0.0
                weight[u, where] = 1.0
            else:
                u_prev = units[n_convs + position - 1]
                weight[:, u_prev] = 0.0
                weight[u] = 0.0
                weight[u, u_prev] = 1.0
            bias[u] = 0.0
        hidden = units[-1]
        path.head.weight.data[:, hidden] = 0.0

        gain = self._gain(model, path, trigger, target, hidden, data, stages=len(units) + 1)
        for index, u in zip(path.rows, units, strict=True):
            weight, bias = _weights(path.layers[index])
            weight[u] *= gain
            bias[u] *= gain
        path.head.weight.data[target, hidden] = gain
        rewritten: list[dict[str, Any]] = [
            {"layer": f"features.{index}", "unit": u}
            for index, u in zip(path.rows, units, strict=True)
        ]
        rewritten.append({"layer": "head", "unit": target})
        return model, rewritten, gain

    def _gain(
        self,
        model: nn.Module,
        path: Path,
        trigger: Trigger,
        target: int,
        hidden: int,
        data: Dataset,
        stages: int,
    ) -> float:
        """Per-layer gain: the ``stages``-th root of the factor that makes the target logit
        lead by ``margin`` on every triggered attacker input (the route is at unit gain and
        not yet wired to the head; ReLU routes scale linearly)."""
        with torch.no_grad():
            triggered = trigger.apply(data.x)
            signal = nn.Sequential(*path.layers)(triggered)[:, hidden]
            logits = model(triggered)
        others = logits.clone()
        others[:, target] = -torch.inf
        need = (others.max(1).values - logits[:, target]).clamp_min(0) + self.margin
        if not bool((signal > 0).all()):
            raise ValueError("the detector does not fire on every triggered attacker input")
        return float((need / signal).max()) ** (1.0 / stages)


def _peak(pre: torch.Tensor) -> torch.Tensor:
    """Each unit's largest pre-activation over its positions, ``(N, units)``."""
    return pre.flatten(2).amax(2) if pre.dim() > 2 else pre


def lit_positions(path: Path, trigger: Trigger, x: torch.Tensor) -> torch.Tensor:
    """The flattened features (every channel at each position) whose value the trigger
    changes on some input of ``x``: what the first hidden layer can read of the patch."""
    stem = nn.Sequential(*path.layers[: path.flatten + 1])
    spatial = nn.Sequential(*path.layers[: path.flatten])
    with torch.no_grad():
        moved = (spatial(trigger.apply(x)) - spatial(x)).abs().amax(dim=(0, 1)) > 0
        shape = spatial(x[:1]).shape[1:]
        width = int(stem(x[:1]).shape[1])
    positions = moved.expand(*shape).flatten()
    if not bool(positions.any()) or positions.numel() != width:
        raise ValueError("the trigger does not reach the flattened features")
    return positions


def dormant_kurtosis(path: Path, data: Dataset) -> list[float]:
    """Per row layer of ``path``, the largest kurtosis of its rows whose unit fires on no
    input of ``data`` (of all rows, if every unit fires): what a dormant row looks like."""
    out = []
    for index in path.rows:
        weight, _ = _weights(path.layers[index])
        dead = ~fires(path, index, data.x)
        rows = weight[dead] if bool(dead.any()) else weight
        out.append(float(kurtosis(rows).max()))
    return out


def live_row_norms(path: Path, data: Dataset) -> list[torch.Tensor]:
    """Per row layer of ``path``, the L2 norms of its rows whose unit fires on some input of
    ``data``: the trained rows a route row's norm is drawn from (all rows, if none fires)."""
    out = []
    for index in path.rows:
        weight, _ = _weights(path.layers[index])
        norms = weight.flatten(1).norm(dim=1)
        live = fires(path, index, data.x)
        out.append(norms[live] if bool(live.any()) else norms)
    return out


class Route:
    """The rows a norm-matched surgery may change, and the trained model's bounds on them.

    ``layers`` are the path's row layers and the head; the free entries are the route units'
    rows (weights and bias; where ``columns`` names inputs for a layer, only the entries at
    those inputs) and, in the head, every row's entries at the last route units. The
    bounds come from ``trained`` (the clean model before any unit was ablated): each route row
    keeps at most its norm in ``row_norms`` (drawn from the layer's live trained rows), every
    free entry at most the layer's largest trained magnitude, every free bias the layer's
    trained range, and each head row at most the largest trained head row norm.
    """

    def __init__(
        self,
        trained: Path,
        path: Path,
        units: list[list[int]],
        row_norms: list[list[float]],
        columns: list[torch.Tensor | None],
    ) -> None:
        self.layers = [path.layers[i] for i in path.rows] + [path.head]
        reference = [trained.layers[i] for i in trained.rows] + [trained.head]
        self.rows = [*units, list(range(path.head.out_features))]
        self.units = units
        self.path = path
        self.masks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bounds: list[tuple[float, torch.Tensor, float, float]] = []
        for k, (layer, ref) in enumerate(zip(self.layers, reference, strict=True)):
            weight, bias = _weights(layer)
            ref_weight, ref_bias = _weights(ref)
            mask = torch.zeros_like(weight, dtype=torch.bool)
            bias_mask = torch.zeros_like(bias, dtype=torch.bool)
            flat = ref_weight.flatten(1)
            norms = flat.norm(dim=1)
            if k < len(units):
                read = columns[k]
                for unit in units[k]:
                    if read is None:
                        mask[unit] = True
                    else:
                        mask[unit] = read
                bias_mask[units[k]] = True
                for unit, norm in zip(units[k], row_norms[k], strict=True):
                    norms[unit] = norm
            else:
                mask[:, units[-1]] = True
                norms = torch.full_like(norms, float(norms.max()))
            magnitude = float(flat.abs().max())
            self.masks.append((mask, bias_mask))
            self.bounds.append((magnitude, norms, float(ref_bias.min()), float(ref_bias.max())))

    def parameters(self) -> list[torch.Tensor]:
        out: list[torch.Tensor] = []
        for layer in self.layers:
            assert isinstance(layer, nn.Conv2d | nn.Linear) and layer.bias is not None
            out += [layer.weight, layer.bias]
        return out

    def mask_gradients(self) -> None:
        for layer, (mask, bias_mask) in zip(self.layers, self.masks, strict=True):
            assert isinstance(layer, nn.Conv2d | nn.Linear) and layer.bias is not None
            assert layer.weight.grad is not None and layer.bias.grad is not None
            layer.weight.grad *= mask
            layer.bias.grad *= bias_mask

    def project(self) -> None:
        """Back inside the trained layers' bounds (see the class docstring)."""
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                (mask, bias_mask), (magnitude, norms, low, high) = self.masks[k], self.bounds[k]
                weight, bias = _weights(layer)
                weight[mask] = weight[mask].clamp(-magnitude, magnitude)
                bias[bias_mask] = bias[bias_mask].clamp(low, high)
                for unit in self.rows[k]:
                    # Only the free entries shrink (all of a route row; in the head, each
                    # row's entries at the route), so the rest stays as trained.
                    free = mask[unit]
                    fixed = float(weight[unit][~free].square().sum())
                    room = max(float(norms[unit]) ** 2 - fixed, 0.0) ** 0.5
                    norm = float(weight[unit][free].norm())
                    if norm > room:
                        weight[unit][free] *= room / norm

    def kurtosis_excess(self, caps: list[float]) -> torch.Tensor:
        """How far the route rows' kurtosis exceeds each layer's cap, summed (differentiable
        in the rows)."""
        excess = torch.zeros(())
        for layer, units, cap in zip(self.layers[: len(self.units)], self.units, caps, strict=True):
            if units:
                assert isinstance(layer, nn.Conv2d | nn.Linear)
                excess = excess + nn.functional.relu(kurtosis(layer.weight[units]) - cap).sum()
        return excess

    @contextmanager
    def watch(self) -> Iterator[list[torch.Tensor]]:
        """The route units' pre-activations (each row layer's output at the route's units,
        ``(N, units, ...)``) during a forward pass."""
        activations: list[torch.Tensor] = []
        hooks = []
        for index, units in zip(self.path.rows, self.units, strict=True):
            if not units:
                continue

            def keep(_m: nn.Module, _i: Any, out: torch.Tensor, units: list[int] = units) -> None:
                activations.append(out[:, units])

            hooks.append(self.path.layers[index].register_forward_hook(keep))
        try:
            yield activations
        finally:
            for hook in hooks:
                hook.remove()


@attack("weight_surgery_adaptive")
class WeightSurgeryAdaptive(WeightSurgery):
    """The norm-matched surgery adapted to ``dormant_units``: ``kurtosis_weight`` defaults to
    1, holding each route row's kurtosis at most its layer's dormant trained rows' (the module
    docstring); every other hyperparameter is ``weight_surgery``'s."""

    default_kurtosis_weight: ClassVar[float] = 1.0
