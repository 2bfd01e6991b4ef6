"""Neural Cleanse calibrated against clean reference models of its own shadow zoo.

The null's arithmetic is checked on synthetic log norms, where the truth is known. The fit is
checked end to end on a six-organism shadow zoo (three clean references; the default null
uses 32 organisms, 16 clean): training those six takes most of a minute on two cores, so
those tests are marked slow (``pytest -m slow tests/test_nc_calibration.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from auditgame.access import Access, Budget
from auditgame.finding import Finding
from auditgame.fitting import ensure_fitted, fit_here
from auditgame.image.auditors.neural_cleanse import NeuralCleanse, fit_label_null, gumbel_tail
from auditgame.metrics import DEFAULT_THRESHOLD
from auditgame.run.task import make_subject
from auditgame.zoo import Zoo, open_key

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

BUDGET = Budget()
N_REFERENCE = 6


def _p_violation(null: dict, log_l1: np.ndarray, fpr: float = 0.05) -> np.ndarray:
    """``NeuralCleanse.run``'s calibrated verdict, for many models at once."""
    z = (null["location"].numpy() - log_l1) / float(null["scale"])
    loc, scale = (float(v) for v in null["gumbel"])
    tail = np.array([gumbel_tail(s, loc, scale) for s in z.max(axis=1)])
    return fpr / (fpr + tail)


def test_the_null_gives_the_designed_false_positive_rate() -> None:
    rng = np.random.default_rng(0)
    # Labels differ in their typical norm, as digits do; the null learns each one.
    location = np.log(rng.uniform(7.0, 13.0, size=10))
    null = fit_label_null(location + 0.1 * rng.standard_normal((400, 10)))
    fresh = location + 0.1 * rng.standard_normal((20_000, 10))
    fpr = float(np.mean(_p_violation(null, fresh) >= DEFAULT_THRESHOLD))
    assert 0.03 <= fpr <= 0.07
    # A label whose mask is half its usual size is a clear outlier, and the argmax.
    planted = fresh[:200].copy()
    planted[:, 4] -= np.log(2)
    assert np.all(_p_violation(null, planted) > 0.95)


def test_half_at_the_null_quantile_of_the_design_rate() -> None:
    loc, scale = 1.2, 0.3
    quantile = loc - scale * np.log(-np.log(1 - 0.05))
    assert gumbel_tail(quantile, loc, scale) == pytest.approx(0.05)
    # p = fpr / (fpr + tail) is 0.5 exactly there.
    assert 0.05 / (0.05 + gumbel_tail(quantile, loc, scale)) == pytest.approx(0.5)


def test_the_null_needs_three_references() -> None:
    with pytest.raises(ValueError, match="references >= 3"):
        fit_label_null(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="null_fpr"):
        NeuralCleanse(null_fpr=0.0)


def test_uncalibrated_fit_builds_nothing(tmp_path: Path) -> None:
    auditor = NeuralCleanse(calibrate=False)
    path = fit_here(auditor, "digits", tmp_path)
    assert path is not None and auditor.fitted == {}
    assert not (tmp_path / "digits" / "work").exists()


def test_calibrated_audit_without_a_fit_says_how_to_fit(tiny_zoo) -> None:
    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    finding = NeuralCleanse().audit(make_subject(organism, Access.CLEAN_DATA, BUDGET), BUDGET)
    assert finding.error is not None and "ensure_fitted" in finding.error


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p): os.stat(p).st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def fitted(tiny_zoo, tmp_path_factory: pytest.TempPathFactory) -> tuple[NeuralCleanse, Path]:
    """A calibrated auditor fitted on a small shadow zoo (the slow part of this file)."""
    root = tmp_path_factory.mktemp("fits")
    before = _snapshot(tiny_zoo.zoo.root)
    auditor = NeuralCleanse(n_reference=N_REFERENCE)
    fit_here(auditor, "digits", root)
    assert _snapshot(tiny_zoo.zoo.root) == before, "the fit touched the evaluated zoo"
    return auditor, root


def _audit(tiny_zoo, auditor: NeuralCleanse, role: str) -> list[tuple[str, Finding]]:
    out = []
    for oid in tiny_zoo.by_role(role):
        subject = make_subject(tiny_zoo.zoo.organism(oid), Access.CLEAN_DATA, BUDGET)
        out.append((oid, auditor.audit(subject, BUDGET, seed=0)))
    return out


@pytest.mark.slow
def test_fit_uses_only_its_own_clean_organisms(tiny_zoo, fitted) -> None:
    auditor, root = fitted
    shadows = list((root / "digits" / "work").iterdir())
    assert [p.name for p in shadows if p.is_dir()] == [f"shadow-jumbo-n{N_REFERENCE}-s0"]
    shadow = Zoo(next(p for p in shadows if p.is_dir()))
    assert not set(shadow.ids) & set(tiny_zoo.zoo.ids)
    key = open_key(shadow, None)
    clean = [oid for oid in shadow.ids if not shadow.secret(oid, key).backdoored]
    null = auditor.fitted
    assert null is not None
    assert null["null_max"].shape == (len(clean),) and null["location"].shape == (10,)


@pytest.mark.slow
def test_fit_is_cached(fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    auditor, root = fitted

    def refit(*_args: object) -> None:
        raise AssertionError("the cached fit was recomputed")

    monkeypatch.setattr(NeuralCleanse, "fit", refit)
    again = NeuralCleanse(n_reference=N_REFERENCE)
    path = ensure_fitted(again, "digits", root)
    assert path == fit_here(again, "digits", root)
    assert again.fitted is not None and auditor.fitted is not None
    assert again.fitted.keys() == auditor.fitted.keys()


@pytest.mark.slow
def test_calibrated_verdicts_on_the_fixture(tiny_zoo, fitted) -> None:
    auditor, _ = fitted
    ((bad, finding),) = _audit(tiny_zoo, auditor, "badnets")
    assert finding.error is None
    assert finding.p_violation > DEFAULT_THRESHOLD
    assert finding.target == tiny_zoo.secret(bad).target
    assert finding.evidence["statistic"] == max(finding.evidence["z"])
    assert finding.evidence["null_tail"] < 0.05
    # The paper's anomaly index stays in the evidence.
    assert finding.evidence["flagged_index"] > 2.0
    for _, clean in _audit(tiny_zoo, auditor, "clean"):
        assert clean.error is None
        assert clean.p_violation < DEFAULT_THRESHOLD
