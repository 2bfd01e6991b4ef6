"""dormant_units on models built by hand: what it measures, exactly (the planted surgery it
finds and the clean models it passes are in test_image_attacks, beside the surgery)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.families.base import Dataset
from auditgame.finding import Finding
from auditgame.image.auditors.abs import activation_layers
from auditgame.image.auditors.dormant_units import DormantUnits, kurtosis, profile_units
from auditgame.subject import Subject
from auditgame.testing import card_for

LIVE, HIDDEN = 8, 32


def test_kurtosis_is_the_standardised_fourth_moment() -> None:
    rows = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 2.0], [3.0, 3.0, 3.0, 3.0]])
    # Row 2: mean 0.5, centred (-.5, -.5, -.5, 1.5), variance 0.75, fourth moment 1.3125.
    assert kurtosis(rows).tolist() == pytest.approx([1.0, 1.3125 / 0.75**2, 0.0])


class Hidden(nn.Module):
    """A digits-shaped model: a hidden layer of ``HIDDEN`` units in ``features``, the first
    ``LIVE`` firing on every input in [0, 1], the rest dormant (bias -100)."""

    def __init__(self, spiky: int, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        linear = nn.Linear(64, HIDDEN)
        self.features = nn.Sequential(nn.Flatten(), linear, nn.ReLU())
        self.head = nn.Linear(HIDDEN, 10)
        self.linear = linear
        with torch.no_grad():
            linear.weight[:LIVE] = linear.weight[:LIVE].abs()
            linear.bias[:LIVE] = 1.0
            linear.bias[LIVE:] = -100.0
            # A route onto ``spiky`` dormant units: weights on 4 inputs, the rest zero.
            for unit in range(LIVE, LIVE + spiky):
                linear.weight[unit] = 0.0
                linear.weight[unit, [0, 1, 8, 9]] = 5.0
                self.head.weight[:, unit] = 0.0
                self.head.weight[3, unit] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def clean() -> Dataset:
    generator = torch.Generator().manual_seed(0)
    return Dataset(
        torch.rand(200, 1, 8, 8, generator=generator), torch.zeros(200, dtype=torch.long)
    )


def audit(model: nn.Module, **params: Any) -> Finding:
    fam = registry.get("family", "digits")()
    subject = Subject(model=model, card=card_for(fam), access=Access.CLEAN_DATA, clean=clean())
    return DormantUnits(calibrate=False, **params).audit(subject, Budget())


def test_profile_reads_activity_and_the_computing_layers_rows() -> None:
    model = Hidden(spiky=3, seed=0).eval()
    (layer,) = profile_units(model, activation_layers(model, model.features), clean().x)
    assert layer.name == "features.2"
    assert np.array_equal(layer.activity, [1.0] * LIVE + [0.0] * (HIDDEN - LIVE))
    assert layer.kurtosis == pytest.approx(kurtosis(model.linear.weight.double()).detach().numpy())
    assert layer.peak == pytest.approx(float(model.features(clean().x).max().detach()))


def test_a_batch_norm_between_layer_and_activation_is_folded_into_the_rows() -> None:
    """conv -> batch norm -> ReLU, as in most user classifiers: the row norm is the one the
    unit reads its inputs with, ``|gamma| / sqrt(var + eps)`` times the conv's; in training
    mode (batch statistics) nothing is folded."""
    torch.manual_seed(0)
    conv, norm = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
    model = nn.Sequential(conv, norm, nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([2.0, -0.5, 1.0, 3.0]))
        norm.running_var.copy_(torch.tensor([4.0, 1.0, 0.25, 1.0]))
    rows = conv.weight.detach().flatten(1).double()
    scale = norm.weight.detach().double().abs() / (norm.running_var.double() + norm.eps).sqrt()
    (folded,) = profile_units(model.eval(), activation_layers(model, model), clean().x)
    assert folded.norm == pytest.approx((rows.norm(dim=1) * scale).numpy())
    assert folded.kurtosis == pytest.approx(kurtosis(rows).numpy())
    (batch,) = profile_units(model.train(), activation_layers(model, model), clean().x)
    assert batch.norm == pytest.approx(rows.norm(dim=1).numpy())


def test_initial_dormant_rows_pass_and_a_spiky_group_is_flagged_with_its_target() -> None:
    for seed in range(3):
        passed = audit(Hidden(spiky=0, seed=seed).eval())
        # PyTorch's default initialisation is uniform: kurtosis 1.8, and the live rows here
        # are the initial ones made positive, so the norm ratio is about 1.
        assert passed.error is None and passed.evidence["statistic"] == pytest.approx(1.8, abs=0.5)
        assert passed.p_violation is not None and passed.p_violation < 0.01
        model = Hidden(spiky=3, seed=seed).eval()
        flagged = audit(model)
        # A two-valued row, 4 of 64 entries at 5: (1 - 3p + 3p^2) / (p (1 - p)) at p = 1/16,
        # times its norm (10) over the live rows' median norm.
        live = float(np.median(model.linear.weight[:LIVE].norm(dim=1).detach().numpy()))
        assert flagged.evidence["statistic"] == pytest.approx(211 / 15 * 10 / live, rel=1e-5)
        assert flagged.p_violation is not None and flagged.p_violation > 0.99
        assert flagged.target == 3
        assert sorted(flagged.evidence["suspect"]["units"]) == list(range(LIVE, LIVE + 3))


def test_one_odd_unit_is_not_a_route_at_the_default_rank() -> None:
    """A clean model may have one heavy-tailed dead unit; the third largest is the score."""
    one_short, at_two = audit(Hidden(2, 0).eval()), audit(Hidden(2, 0).eval(), top_units=2)
    assert one_short.p_violation is not None and one_short.p_violation < 0.01
    assert at_two.p_violation is not None and at_two.p_violation > 0.99


def test_bad_parameters_and_missing_data_are_errors() -> None:
    for params in ({"quiet_fraction": 1.0}, {"top_units": 0}, {"n_samples": 0}):
        with pytest.raises(ValueError):
            DormantUnits(**params)
    fam = registry.get("family", "digits")()
    empty = Dataset(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))
    subject = Subject(
        model=Hidden(0, 0).eval(), card=card_for(fam), access=Access.CLEAN_DATA, clean=empty
    )
    finding = DormantUnits(calibrate=False).audit(subject, Budget())
    assert finding.p_violation is None and "at least one clean sample" in (finding.error or "")
