"""The example plugin's own tests: the conformance suites, and what each class claims to do.

Run from this folder with ``pytest`` (``pythonpath`` in pyproject.toml finds ``src/``, so
nothing needs installing). They train small digits models on one core: about a minute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from auditgame_example import Grating, PatchSearch
from auditgame_example.grating import grating

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import Planted, train_clean
from auditgame.finding import Finding
from auditgame.image.attacks.badnets import BadNets
from auditgame.subject import Subject
from auditgame.testing import card_for, check_attack, check_auditor

torch.set_num_threads(1)


def test_the_package_registers_both() -> None:
    assert registry.get("auditor", "patch_search") is PatchSearch
    assert registry.get("attack", "grating") is Grating


def test_patch_search_conforms(tmp_path: Path) -> None:
    check_auditor(PatchSearch, family="digits", workdir=tmp_path)


def test_grating_conforms() -> None:
    check_attack(Grating, family="digits")


def audit(planted: Planted) -> tuple[Finding, bool]:
    """The finding, and whether the spec confirms its witness on the test split."""
    fam = registry.get("family", "digits")()
    card = card_for(fam)
    subject = Subject(
        model=planted.model, card=card, access=Access.CLEAN_DATA, clean=fam.data().val.take(100)
    )
    finding = PatchSearch().audit(subject, Budget(seconds=60), seed=0)
    assert finding.error is None, finding.error
    assert finding.trigger is not None and finding.target is not None
    test = fam.data().test
    check = card.spec.check_witness(planted.model, finding.trigger, finding.target, test.x, test.y)
    return finding, check.violates


@pytest.mark.parametrize("seed", [13, 14])
def test_patch_search_finds_the_planted_2x2_patch(seed: int) -> None:
    fam = registry.get("family", "digits")()
    planted = BadNets(patch_sizes=(2,)).plant(fam, np.random.default_rng(seed), seed)
    finding, confirmed = audit(planted)
    assert finding.p_violation > 0.9
    assert finding.target == planted.secret.target
    assert finding.evidence["position"] == planted.secret.params["position"]
    assert confirmed


@pytest.mark.parametrize("seed", [0, 1])
def test_patch_search_leaves_clean_models_alone(seed: int) -> None:
    fam = registry.get("family", "digits")()
    torch.manual_seed(seed)
    finding, confirmed = audit(train_clean(fam, np.random.default_rng(seed), seed))
    assert finding.p_violation < 0.5
    assert not confirmed


def test_grating_is_a_blend_inside_the_digits_threat_model() -> None:
    fam = registry.get("family", "digits")()
    threat = fam.spec().threat_model
    for seed in range(20):
        draw = Grating().draw(np.random.default_rng(seed), fam)
        mask, pattern = draw.trigger.mask, draw.trigger.pattern
        assert np.ptp(mask) == 0 and 0.15 <= mask[0, 0] <= 0.25
        assert threat.contains(draw.trigger)
        assert pattern.min() >= 0 and pattern.max() <= 1


def test_a_grating_has_the_periods_it_was_drawn_with() -> None:
    wave = grating(64, 64, cycles=2.0, angle=0.0, phase=0.3)
    crossings = np.sum(np.diff(np.sign(wave[:, 0] - 0.5)) != 0)
    assert crossings == 4  # two periods cross the midline four times
    assert np.allclose(wave, wave[:, :1])  # angle 0: constant along each row
    assert wave.min() >= 0 and wave.max() <= 1
