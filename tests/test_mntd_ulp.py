"""MNTD and ULP: fitted on a small shadow zoo of their own, cached, and audited blind.

One 12-organism digits shadow zoo is built once for the module (about 30 s on one core) and
both auditors are fitted on it with three folds; every test below reuses those fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import FittedAuditor
from auditgame.fitting import ensure_fitted, load_fit, shadow_seed, shadow_zoo
from auditgame.image.auditors.mntd import stratified_folds
from auditgame.run.task import make_subject
from auditgame.subject import Subject

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

N_SHADOW = 12
NAMES = ("mntd", "ulp")


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("fits")
    # Built here on one worker; the fits below find it complete and reuse it.
    shadow_zoo("digits", N_SHADOW, 0, root / "digits" / "work", workers=1)
    paths = {name: ensure_fitted(make(name), "digits", root) for name in NAMES}
    return root, paths


def make(name: str, **changes: object) -> FittedAuditor:
    # The meta-classifier's own rule; tests/test_calibration.py covers the calibration.
    params = {"n_shadow": N_SHADOW, "folds": 3, "calibrate": False, **changes}
    auditor = registry.get("auditor", name)(**params)
    assert isinstance(auditor, FittedAuditor)
    return auditor


def subject_of(tiny_zoo, organism_id: str) -> Subject:
    return make_subject(tiny_zoo.zoo.organism(organism_id), Access.WEIGHTS, Budget())


@pytest.mark.parametrize("name", NAMES)
def test_registered_as_static_fitted_auditors(name: str) -> None:
    cls = registry.get("auditor", name)
    assert issubclass(cls, FittedAuditor)
    assert cls.access == Access.WEIGHTS
    assert cls.supports("digits")


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_cached(
    name: str, fits: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, paths = fits

    def refit(*_: object) -> None:
        raise AssertionError("fit ran again although a cached fit exists")

    auditor = make(name)
    monkeypatch.setattr(type(auditor), "fit", refit)
    assert ensure_fitted(auditor, "digits", root) == paths[name]


@pytest.mark.parametrize("name", NAMES)
def test_fit_holds_only_tensors_and_a_validation_auroc(
    name: str, fits: tuple[Path, dict[str, Path]]
) -> None:
    _, paths = fits
    with safe_open(paths[name], framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert tensors["queries"].shape == (10, 1, 8, 8)
    assert 0.0 <= float(tensors["queries"].min()) <= float(tensors["queries"].max()) <= 1.0
    assert tensors["val_auroc"].shape == ()
    assert 0.0 <= float(tensors["val_auroc"]) <= 1.0
    assert int(tensors["n_clean"]) + int(tensors["n_backdoored"]) == N_SHADOW


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_deterministic(name: str, fits: tuple[Path, dict[str, Path]]) -> None:
    root, _ = fits
    first = make(name, steps=3).fit("digits", root / "digits" / "work")
    second = make(name, steps=3).fit("digits", root / "digits" / "work")
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


@pytest.mark.parametrize("name", NAMES)
def test_run_without_fit_raises(name: str, tiny_zoo) -> None:
    auditor = make(name)
    subject = subject_of(tiny_zoo, tiny_zoo.zoo.ids[0])
    with pytest.raises(RuntimeError, match="ensure_fitted"):
        auditor.run(subject, Budget(), np.random.default_rng(0))
    finding = auditor.audit(subject, Budget())
    assert finding.error is not None and "ensure_fitted" in finding.error


@pytest.mark.parametrize("name", NAMES)
def test_badnets_scores_above_both_clean_organisms(
    name: str, fits: tuple[Path, dict[str, Path]], tiny_zoo
) -> None:
    _, paths = fits
    auditor = make(name)
    load_fit(auditor, paths[name])
    findings = {oid: auditor.audit(subject_of(tiny_zoo, oid), Budget()) for oid in tiny_zoo.zoo.ids}
    for finding in findings.values():
        assert finding.error is None
        assert finding.trigger is None and finding.target is None
        assert finding.cost.backward == 0
        assert finding.cost.forward == 10  # one pass of the ten learned queries
        assert 0.0 <= finding.evidence["val_auroc"] <= 1.0
    badnets = findings[tiny_zoo.by_role("badnets")[0]].p_violation
    clean = [findings[oid].p_violation for oid in tiny_zoo.by_role("clean")]
    assert len(clean) == 2
    assert badnets > max(clean)


def test_a_fit_for_other_inputs_is_refused(fits: tuple[Path, dict[str, Path]], tiny_zoo) -> None:
    _, paths = fits
    auditor = make("mntd")
    load_fit(auditor, paths["mntd"])
    assert auditor.fitted is not None
    auditor.fitted = {**auditor.fitted, "queries": torch.rand(10, 1, 4, 4)}
    subject = subject_of(tiny_zoo, tiny_zoo.zoo.ids[0])
    with pytest.raises(ValueError, match=r"fitted for inputs \(1, 4, 4\)"):
        auditor.run(subject, Budget(), np.random.default_rng(0))


def test_folds_need_enough_models_of_each_class() -> None:
    rng = np.random.default_rng(0)
    folds = stratified_folds(np.array([0.0, 0.0, 1.0, 1.0, 0.0, 1.0]), 3, rng)
    assert sorted(folds[[0, 1, 4]]) == [0, 1, 2] and sorted(folds[[2, 3, 5]]) == [0, 1, 2]
    with pytest.raises(ValueError, match="fewer than folds=3"):
        stratified_folds(np.array([0.0, 0.0, 1.0, 1.0, 1.0]), 3, rng)


def test_shadow_seeds_are_disjoint_from_evaluated_zoo_seeds() -> None:
    """``build_zoo`` trains organism ``i`` of a zoo built from ``seed`` from the i-th child of
    ``SeedSequence(seed)``; no shadow organism may share a training seed with an organism of
    a zoo built from a small integer seed."""

    def organism_seeds(seed: int, n: int) -> set[int]:
        children = np.random.SeedSequence(seed).spawn(n)
        return {int(child.generate_state(1)[0]) for child in children}

    evaluated = set().union(*(organism_seeds(seed, 64) for seed in range(200)))
    for fit_seed in range(4):
        assert shadow_seed(fit_seed) >= 2**32
        assert not organism_seeds(shadow_seed(fit_seed), 64) & evaluated
    assert len({shadow_seed(s) for s in range(100)}) == 100


@pytest.mark.slow
def test_default_fit_validates_and_separates_the_tiny_zoo(tmp_path: Path, tiny_zoo) -> None:
    """The defaults (32 shadow organisms, four folds): about 100 s of one core. Measured:
    validation AUROC 0.99 (mntd) and 1.00 (ulp); every tiny-zoo organism on the right side
    of 0.5."""
    shadow_zoo("digits", 32, 0, tmp_path / "digits" / "work", workers=1)
    for name in NAMES:
        auditor = registry.get("auditor", name)()
        load_fit(auditor, ensure_fitted(auditor, "digits", tmp_path))
        assert auditor.fitted is not None
        assert float(auditor.fitted["val_auroc"]) >= 0.9, name
        for oid in tiny_zoo.zoo.ids:
            finding = auditor.audit(subject_of(tiny_zoo, oid), Budget())
            assert (finding.p_violation > 0.5) == tiny_zoo.secret(oid).backdoored, (name, oid)
