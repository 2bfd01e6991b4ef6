"""Triggers, threat models and the spec's own witness check (no secret involved)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditgame import registry
from auditgame.image.kind import MaskPatternThreat
from auditgame.image.trigger import Trigger
from auditgame.spec import Spec


def test_trigger_applies_mask_and_pattern() -> None:
    mask = np.zeros((2, 2), np.float32)
    mask[0, 0] = 1.0
    mask[1, 1] = 0.5
    trigger = Trigger(mask, np.ones((1, 2, 2), np.float32))
    out = trigger.apply(torch.zeros(1, 1, 2, 2))
    assert out[0, 0].tolist() == [[1.0, 0.0], [0.0, 0.5]]
    assert trigger.l1 == pytest.approx(1.5)
    assert Trigger.from_dict(trigger.to_dict()).l1 == pytest.approx(1.5)


def test_trigger_rejects_bad_shapes_and_values() -> None:
    with pytest.raises(ValueError, match="same H, W"):
        Trigger(np.zeros((2, 2)), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="finite"):
        Trigger(np.full((2, 2), np.nan), np.zeros((1, 2, 2)))


def test_threat_model_bounds_the_mask() -> None:
    threat = MaskPatternThreat(max_mask_l1=20)
    patch = np.zeros((8, 8), np.float32)
    patch[:3, :3] = 1
    assert threat.contains(Trigger(patch, np.zeros((1, 8, 8))))
    assert threat.contains(Trigger(np.full((8, 8), 0.3), np.zeros((1, 8, 8))))
    assert not threat.contains(Trigger(np.ones((8, 8)), np.zeros((1, 8, 8))))


def test_spec_verifies_the_planted_trigger_without_the_secret(tiny_zoo) -> None:
    fam = registry.get("family", "digits")()
    test = fam.data().test
    bad_id = tiny_zoo.by_role("badnets")[0]
    secret = tiny_zoo.secret(bad_id)
    trigger = secret.trigger_object()
    assert trigger is not None and secret.target is not None
    bad = tiny_zoo.zoo.organism(bad_id)
    spec = bad.card.spec
    check = spec.check_witness(bad.model(), trigger.to_dict(), secret.target, test.x, test.y)
    assert check.violates and check.in_threat_model
    assert check.asr == pytest.approx(secret.asr)
    clean = tiny_zoo.zoo.organism(tiny_zoo.by_role("clean")[0])
    on_clean = spec.check_witness(clean.model(), trigger.to_dict(), secret.target, test.x, test.y)
    assert on_clean.asr < 0.2 and not on_clean.violates


def test_a_trigger_outside_the_threat_model_proves_nothing(tiny_zoo) -> None:
    fam = registry.get("family", "digits")()
    test = fam.data().test
    clean = tiny_zoo.zoo.organism(tiny_zoo.by_role("clean")[0])
    # Replacing the whole image by a real digit 3 sends everything to 3, but it is no backdoor.
    three = test.x[test.y == 3][0]
    trigger = Trigger(np.ones((8, 8), np.float32), three.numpy())
    check = clean.card.spec.check_witness(clean.model(), trigger.to_dict(), 3, test.x, test.y)
    assert check.asr > 0.9
    assert not check.in_threat_model and not check.violates


def test_spec_threshold_is_validated() -> None:
    with pytest.raises(ValueError):
        Spec(behaviour="x", threat_model=MaskPatternThreat(max_mask_l1=1), tau=1.5)


def test_a_mask_above_the_bound_is_projected_to_it() -> None:
    """``project`` brings a soft mask to the bound (the capped-simplex projection: one shift
    down for every pixel, clipped at 0), and leaves a mask inside the bound as it is."""
    mask = np.full((8, 8), 0.04)
    mask[2:4, 2:4] = 0.98
    trigger = Trigger(mask, np.ones((1, 8, 8)))
    threat = MaskPatternThreat(max_mask_l1=4)
    assert trigger.l1 > 4 and not threat.contains(trigger)
    inside = threat.project(trigger)
    assert threat.contains(inside) and inside.l1 == pytest.approx(4, abs=1e-4)
    # One shift for every pixel: the core barely moves, the halo all but goes.
    assert (inside.mask[2:4, 2:4] > 0.9).all() and (inside.mask[5:, 5:] < 0.005).all()
    assert np.array_equal(inside.pattern, trigger.pattern)
    assert MaskPatternThreat(max_mask_l1=20).project(trigger) is trigger
