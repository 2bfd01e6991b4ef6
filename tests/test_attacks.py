"""The digits family and the red team: accuracy, recorded secrets, and the success floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditgame import metrics, registry
from auditgame.attacks.base import PlantingFailed, train_clean
from auditgame.families.base import accuracy
from auditgame.image.attacks.badnets import BadNets
from auditgame.zoo import build_zoo, open_key

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels


def test_digits_split_is_fixed_and_disjoint() -> None:
    splits = registry.get("family", "digits")().data()
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1078, 359, 360)
    assert float(splits.train.x.max()) <= 1.0 and float(splits.train.x.min()) >= 0.0


def test_organisms_are_accurate_and_backdoors_reproduce(tiny_zoo) -> None:
    test = registry.get("family", "digits")().data().test
    for oid in tiny_zoo.zoo.ids:
        model = tiny_zoo.zoo.organism(oid).model()
        secret = tiny_zoo.secret(oid)
        assert accuracy(model, test) >= 0.95
        assert accuracy(model, test) == pytest.approx(secret.clean_accuracy)
        trigger = secret.trigger_object()
        if secret.backdoored:
            assert trigger is not None and secret.target is not None
            assert secret.poison_rate is not None and 0.05 <= secret.poison_rate <= 0.15
            asr = metrics.attack_success_rate(model, trigger.apply, test.x, test.y, secret.target)
            assert asr == pytest.approx(secret.asr) and asr >= 0.9
        else:
            assert trigger is None and secret.target is None


def test_badnets_draws_a_visible_patch() -> None:
    fam = registry.get("family", "digits")()
    for seed in range(20):
        draw = BadNets().draw(np.random.default_rng(seed), fam)
        size = draw.params["patch_size"]
        assert draw.trigger.l1 == size * size
        assert (draw.trigger.pattern * draw.trigger.mask).sum() >= 1


def test_poisoning_relabels_only_other_classes() -> None:
    fam = registry.get("family", "digits")()
    train = fam.data().train
    rng = np.random.default_rng(0)
    draw = BadNets().draw(rng, fam)
    x, y = BadNets().poison(draw, train.x, train.y, rng)
    changed = (x != train.x).flatten(1).any(1)
    assert int((y != train.y).sum()) == round(draw.poison_rate * len(y))
    assert bool((y[changed] == draw.target).all())
    assert bool((train.y[y != train.y] != draw.target).all())


def test_an_attack_below_its_floor_is_never_kept(tmp_path: Path) -> None:
    @registry.attack("never_enough")
    class NeverEnough(BadNets):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(min_asr=1.01, max_attempts=1)

    with pytest.raises(PlantingFailed, match="below the floor after 1 attempts"):
        NeverEnough().plant(registry.get("family", "digits")(), np.random.default_rng(0), 0)
    zoo = build_zoo("digits", 2, 3, tmp_path / "z", attacks=("never_enough",))
    assert len(zoo.ids) == 1
    assert [d.role for d in zoo.manifest.dropped] == ["never_enough"]
    key = open_key(zoo, None)
    assert not zoo.secret(zoo.ids[0], key).backdoored


def test_a_clean_organism_below_the_family_floor_is_retrained_then_dropped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fam = registry.get("family", "digits")()
    monkeypatch.setattr(type(fam), "min_clean_accuracy", 1.01)
    with pytest.raises(PlantingFailed, match="clean: test accuracy stayed below the floor"):
        train_clean(fam, np.random.default_rng(0), 0, max_attempts=2)
