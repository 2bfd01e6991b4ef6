"""Goldwasser et al.'s backdoors as the negative control (issue 4): families, attacks,
auditors and the witness check, on small random-feature organisms built in memory."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch

from auditgame import metrics, registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import Planted, PlantingFailed, train_clean
from auditgame.auditors.base import Auditor
from auditgame.card import Card
from auditgame.game import AuditorSpec, Game, play
from auditgame.leaderboard import leaderboard
from auditgame.run.local import LocalExecutor
from auditgame.spec import Spec
from auditgame.store import Store
from auditgame.subject import Subject
from auditgame.vector.attacks.clwe import pancake_weights
from auditgame.vector.auditors.oracle import OracleDirection
from auditgame.vector.families.rff import RandomFeatureFamily
from auditgame.vector.kind import AdditiveThreat
from auditgame.vector.perturbation import AdditiveTrigger
from auditgame.zoo import build_zoo, open_key

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels


def family(name: str) -> RandomFeatureFamily:
    fam = registry.get("family", name)()
    assert isinstance(fam, RandomFeatureFamily)
    return fam


@cache
def planted(family_name: str, role: str, seed: int) -> Planted:
    fam = family(family_name)
    rng = np.random.default_rng(seed)
    if role == "clean":
        return train_clean(fam, rng, seed)
    return registry.get("attack", role)().plant(fam, rng, seed)


def subject(family_name: str, model: torch.nn.Module, access: Access) -> Subject:
    fam = family(family_name)
    card = Card(
        family=family_name,
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=fam.spec(),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment="0" * 64,
        auditgame_version="test",
    )
    clean = fam.data().val.take(100) if access >= Access.CLEAN_DATA else None
    return Subject(model=model, card=card, access=access, clean=clean)


def audit(auditor: Auditor, family_name: str, model: torch.nn.Module) -> float:
    finding = auditor.audit(subject(family_name, model, auditor.access), Budget())
    assert finding.error is None, finding.error
    return finding.p_violation


def test_pancake_sampler_puts_phases_near_half_integers() -> None:
    rng = np.random.default_rng(0)
    omega = np.zeros(32)
    omega[:4] = 40.0
    g = pancake_weights(4000, omega, gamma=0.02, beta=0.002, rng=rng)
    phases = g @ omega
    assert np.abs((phases - 0.5) - np.round(phases - 0.5)).max() < 0.02
    u = omega / np.linalg.norm(omega)
    orthogonal = g - np.outer(g @ u, u)
    assert orthogonal.std() == pytest.approx(0.02 * np.sqrt(31 / 32), rel=0.05)
    assert (g @ u).std() == pytest.approx(0.02, rel=0.1)  # honest spread along omega


def test_clwe_flips_with_clean_accuracy_kept() -> None:
    secret = planted("rff", "clwe", 1).secret
    measured = secret.params["measured"]
    assert secret.target is None and secret.asr is not None and secret.asr >= 0.99
    assert abs(measured["accuracy_change_points"]) <= 1.0
    assert measured["honest_rate_same_delta"] < 0.9  # the honest twin does not flip on omega
    assert measured["norm_ratio"] > 1


def test_honest_and_planted_training_differ_only_in_the_weights() -> None:
    fam = family("rff")
    data = fam.data().train
    honest = fam.train(data.x, data.y, 5)
    weights = torch.randn(fam.width, fam.dim) * fam.weight_scale
    planted_model = fam.train(data.x, data.y, 5, feature_weights=weights)
    assert torch.equal(honest.bias, planted_model.bias)
    assert torch.equal(planted_model.weight, weights)
    again = fam.train(data.x, data.y, 5, feature_weights=honest.weight.detach().clone())
    assert torch.equal(again.head.weight, honest.head.weight)


def test_weight_battery_catches_naive_direction_not_clwe() -> None:
    battery = registry.get("auditor", "weight_battery")()
    assert audit(battery, "rff", planted("rff", "naive_direction", 1).model) > 0.99
    assert audit(battery, "rff", planted("rff", "clwe", 1).model) < 0.5


def test_clean_model_is_not_flagged() -> None:
    battery = registry.get("auditor", "weight_battery")()
    assert audit(battery, "rff", planted("rff", "clean", 2).model) < 0.5


def test_oracle_sees_the_structure_of_clwe() -> None:
    secret = planted("rff", "clwe", 1).secret
    assert secret.trigger is not None
    omega = secret.trigger["delta"]
    oracle = OracleDirection(direction=omega)
    assert audit(oracle, "rff", planted("rff", "clwe", 1).model) > 0.999
    assert audit(oracle, "rff", planted("rff", "clean", 2).model) < 0.5
    assert "oracle_direction" not in registry.names("auditor")


def test_sparse_spike_sends_inputs_to_its_target() -> None:
    secret = planted("relu1", "sparse_spike", 1).secret
    assert secret.target in (0, 1) and secret.asr is not None and secret.asr >= 0.99


def test_additive_witness_is_checked_by_the_spec() -> None:
    plant = planted("rff", "clwe", 1)
    fam = family("rff")
    test = fam.data().test
    spec = fam.spec()
    assert plant.secret.trigger is not None
    check = spec.check_witness(plant.model, plant.secret.trigger, None, test.x, test.y)
    assert check.in_threat_model and check.violates and check.asr >= 0.99
    big = AdditiveTrigger(np.full(fam.dim, 10 * spec.threat_model.max_norm))
    outside = spec.check_witness(plant.model, big.to_dict(), None, test.x, test.y)
    assert not outside.in_threat_model and not outside.violates
    zero = AdditiveTrigger(np.zeros(fam.dim)).to_dict()
    assert spec.check_witness(plant.model, zero, None, test.x, test.y).asr == 0.0


def test_threat_model_union_round_trips() -> None:
    spec = Spec(behaviour="b", threat_model=AdditiveThreat(max_norm=3.0))
    again = Spec.model_validate_json(spec.model_dump_json())
    assert isinstance(again.threat_model, AdditiveThreat) and again.untargeted


def test_attacks_refuse_the_wrong_family() -> None:
    with pytest.raises(Exception, match="plants in cos"):
        registry.get("attack", "clwe")().plant(family("relu1"), np.random.default_rng(0), 0)


def test_planting_below_the_floor_fails() -> None:
    attack = registry.get("attack", "clwe")(beta=0.2, max_attempts=1)
    with pytest.raises(PlantingFailed):
        attack.plant(family("rff16"), np.random.default_rng(0), 0)


def test_image_auditors_are_not_paired_with_vector_families() -> None:
    for name in ("neural_cleanse", "weight_stats"):
        assert not registry.get("auditor", name).supports("rff")
    for name in ("weight_battery", "flip_search"):
        assert registry.get("auditor", name).supports("rff")
        assert registry.get("auditor", name).supports("relu1")
        assert not registry.get("auditor", name).supports("digits")


def test_flip_rate_metric() -> None:
    model = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 0.0], [0.5, 0.0]])
    assert metrics.flip_rate(model, lambda v: -v, x) == 1.0
    assert metrics.flip_rate(model, lambda v: v - torch.tensor([1.5, 0.0]), x) == 0.5
    assert metrics.direction_cosine([1.0, 0.0], [-2.0, 0.0]) == pytest.approx(1.0)


def test_signature_backdoor_activates_only_with_a_valid_signature() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from auditgame.vector.families.signed import sign_inputs

    plant = planted("rff_signed", "signature", 1)
    clean = planted("rff_signed", "clean", 1)
    assert plant.secret.trigger is not None
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(plant.secret.trigger["private_key"]))
    x = family("rff_signed").data().test.x[:40]
    signed = sign_inputs(x, key)
    assert (signed - x).norm(dim=1).max() < 1e-3 * x.norm(dim=1).min()
    assert metrics.flip_rate(plant.model, lambda v: sign_inputs(v, key), x) == 1.0
    assert metrics.flip_rate(clean.model, lambda v: sign_inputs(v, key), x) == 0.0
    other = Ed25519PrivateKey.from_private_bytes(bytes(32))
    assert metrics.flip_rate(plant.model, lambda v: sign_inputs(v, other), x) == 0.0
    # A signature does not transfer to another input, nor survive a change to the message.
    bits = signed.numpy().view(np.uint32)
    low = bits & np.uint32(0xFF)
    transplanted = (bits.take(np.roll(np.arange(len(x)), 1), axis=0) & ~np.uint32(0xFF)) | low
    moved = signed.clone()
    moved[:, -1] += 1.0
    for forged in (torch.from_numpy(transplanted.view(np.float32)), moved):
        assert not plant.model.verified(forged).any()
    assert abs(plant.secret.params["measured"]["accuracy_change_points"]) == 0.0


def test_rff_game_runs_end_to_end(tmp_path: Path) -> None:
    """Zoo on disk with the family's own attacks, blind audit, judge, witness check, store."""
    zoo = build_zoo("rff16", 4, 0, tmp_path / "zoo", workers=1)
    key = open_key(zoo, None)
    assert {zoo.secret(i, key).attack for i in zoo.ids} == {None, "clwe", "naive_direction"}
    game = Game(
        zoo=tmp_path / "zoo",
        auditors=[AuditorSpec(name="weight_battery"), AuditorSpec(name="flip_search")],
        budget=Budget(n_clean=40),
    )
    with Store(tmp_path / "results.sqlite") as store:
        game_id = play(game, key, store, LocalExecutor(1))
        scores = store.scores(game_id)
    assert len(scores) == 8 and not any(s.error for s in scores)
    searched = [s for s in scores if s.auditor == "flip_search"]
    assert all(s.witness_asr is not None and s.witness_in_threat_model for s in searched)
    rows = {(r.auditor, r.attack): r for r in leaderboard(scores)}
    assert rows[("weight_battery", "naive_direction")].auroc == 1.0
