"""Every static detector calibrated against clean reference models of its family.

The null's arithmetic (``auditors.calibrated.null_tail``) is checked on synthetic statistics,
where the truth is known: the false-positive rate it designs holds for light and heavy tails.
The fit is checked end to end on a few clean references (``fitting.reference_zoo``): training
them takes most of a minute on two cores, so those tests are marked slow
(``pytest -m slow tests/test_calibration.py``).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.calibrated import null_tail, null_tails, reference_subjects
from auditgame.cache import cache_dir
from auditgame.finding import Finding
from auditgame.fitting import ensure_fitted, fit_here, references_needed
from auditgame.game import AuditorSpec, Game, play
from auditgame.image.auditors.dynamic.mahalanobis import Mahalanobis
from auditgame.image.auditors.neural_cleanse import NeuralCleanse, fit_label_null
from auditgame.image.auditors.weight_stats import WeightStats
from auditgame.metrics import DEFAULT_THRESHOLD
from auditgame.run.local import LocalExecutor
from auditgame.run.task import make_subject
from auditgame.store import Store
from auditgame.zoo import Zoo

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

BUDGET = Budget()
N_REFERENCE = 6


def _flag_rate(draw, n: int, fpr: float, trials: int = 400, fresh: int = 200) -> float:
    """How often a fresh clean statistic is flagged (p >= 0.5) against ``n`` references,
    over many reference sets: the false-positive rate a user of the null would see."""
    rng = np.random.default_rng(0)
    flagged = 0
    for _ in range(trials):
        null = draw(rng, n)
        tails = null_tails(draw(rng, fresh), null)
        flagged += int(np.sum(fpr / (fpr + tails) >= DEFAULT_THRESHOLD))
    return flagged / (trials * fresh)


@pytest.mark.parametrize(
    "draw",
    [
        lambda rng, k: rng.standard_normal(k),
        lambda rng, k: rng.exponential(size=k),
        lambda rng, k: rng.standard_t(2, size=k),
        lambda rng, k: np.round(rng.exponential(size=k), 1),  # ties
    ],
    ids=["normal", "exponential", "student-t2", "ties"],
)
def test_the_null_keeps_its_false_positive_rate(draw) -> None:
    """Flagging needs a statistic beyond every reference, so the rate is at most 1/(n+1),
    whatever the statistic's law; and it is not zero (the null can flag at all)."""
    rate = _flag_rate(draw, 64, 0.01)
    assert 0.0005 < rate <= 1 / 65 + 0.002


def test_the_tail_is_conformal_and_decreasing() -> None:
    null = np.array([3.0, 1.0, 2.0, 2.0, 5.0])
    assert null_tail(0.0, null) == 1.0 and null_tail(1.0, null) == 1.0
    # 1 + #{null >= v} over n + 1 at each reference value.
    assert null_tail(2.0, null) == pytest.approx(5 / 6)
    assert null_tail(5.0, null) == pytest.approx(2 / 6)
    grid = np.linspace(-1, 12, 200)
    tails = [null_tail(s, null) for s in grid]
    assert all(a >= b for a, b in itertools.pairwise(tails))
    beyond_smallest = tails[grid.searchsorted(1.0, side="right") :]
    assert all(a > b for a, b in itertools.pairwise(beyond_smallest))
    assert null_tail(20.0, null) < 0.01
    with pytest.raises(ValueError, match="at least 2 finite"):
        null_tail(1.0, np.array([1.0]))
    with pytest.raises(ValueError, match="finite number"):
        null_tail(float("nan"), null)


def test_neural_cleanse_null_is_leave_one_out() -> None:
    rng = np.random.default_rng(0)
    location = np.log(rng.uniform(7.0, 13.0, size=10))
    log_l1 = location + 0.1 * rng.standard_normal((40, 10))
    null = fit_label_null(log_l1)
    assert null["null"].shape == (40,) and null["location"].shape == (10,)
    # Each reference is scored against the others: its maximum z is what a fresh model gets.
    assert float(null["null"].median()) > 0
    # A label whose mask is half its usual size is far beyond every reference.
    z = (null["location"].numpy() - (location - np.log(2))) / float(null["scale"])
    assert null_tail(float(z.max()), null["null"].numpy()) < 1e-3


def test_the_null_needs_three_references() -> None:
    with pytest.raises(ValueError, match="references >= 3"):
        fit_label_null(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="null_fpr"):
        NeuralCleanse(null_fpr=0.0)
    with pytest.raises(ValueError, match="at least 3 references"):
        WeightStats(n_reference=2)


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
    """A calibrated auditor fitted on a few clean references (the slow part of this file)."""
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
def test_fit_uses_only_its_own_clean_references(tiny_zoo, fitted) -> None:
    auditor, root = fitted
    assert not (root / "digits" / "work").exists() or not any((root / "digits" / "work").iterdir())
    references = Zoo(cache_dir() / f"references-digits-n{N_REFERENCE}-s0")
    assert len(references.ids) == N_REFERENCE and not set(references.ids) & set(tiny_zoo.zoo.ids)
    null = auditor.fitted
    assert null is not None
    assert null["null"].shape == (N_REFERENCE,) and null["location"].shape == (10,)


@pytest.mark.slow
def test_auditors_share_the_references(tiny_zoo, fitted) -> None:
    """weight_stats calibrates on the references Neural Cleanse's fit trained, and judges
    them by its own statistic."""
    _, root = fitted
    references = cache_dir() / f"references-digits-n{N_REFERENCE}-s0"
    before = _snapshot(references)
    auditor = WeightStats(n_reference=N_REFERENCE)
    fit_here(auditor, "digits", root)
    assert _snapshot(references) == before
    assert auditor.fitted is not None and auditor.fitted["null"].shape == (N_REFERENCE,)
    organism = tiny_zoo.zoo.organism(tiny_zoo.by_role("clean")[0])
    finding = auditor.audit(make_subject(organism, Access.WEIGHTS, BUDGET), BUDGET)
    assert finding.error is None
    assert finding.evidence["statistic"] == max(finding.evidence["anomaly_index"])
    assert finding.evidence["n_reference"] == N_REFERENCE


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
    assert finding.evidence["null_tail"] < auditor.null_fpr
    # The paper's anomaly index stays in the evidence.
    assert finding.evidence["flagged_index"] > 2.0
    for _, clean in _audit(tiny_zoo, auditor, "clean"):
        assert clean.error is None
        assert clean.p_violation < DEFAULT_THRESHOLD


def test_a_game_calibrates_in_the_sandbox_on_references_the_referee_built(
    tiny_zoo, tmp_path: Path
) -> None:
    """The referee trains the clean references into the cache; the sandboxed fit reads them
    from its read-only view and every finding is judged against them."""
    spec = AuditorSpec(name="weight_stats", params={"n_reference": 3, "reference_seed": 7})
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[spec])
    with Store(tmp_path / "r.sqlite") as store:
        game_id = play(game, tiny_zoo.key, store, LocalExecutor(workers=1))
        rows = store.rows(game_id)
    assert Zoo(cache_dir() / "references-digits-n3-s7").ids
    assert len(rows) == len(tiny_zoo.zoo.ids)
    for row in rows:
        evidence = json.loads(row["finding_json"])["evidence"]
        assert row["error"] is None and evidence["n_reference"] == 3
        assert 0.0 < evidence["null_tail"] <= 1.0


def test_the_referee_reads_the_references_an_auditor_wants_as_bounded_data() -> None:
    wanted = {"calibrate": True, "n_reference": 64, "reference_seed": 3}
    assert references_needed(wanted) == (64, 3)
    assert references_needed({**wanted, "calibrate": False}) is None
    assert references_needed({"steps": 20}) is None
    assert references_needed({**wanted, "n_reference": "64"}) is None
    with pytest.raises(ValueError, match="n_reference"):
        references_needed({**wanted, "n_reference": 10**6})


def test_a_dynamic_baseline_is_calibrated_on_references_under_decoy_traffic() -> None:
    """A clean organism's traffic in a game carries decoys, so the null of a dynamic
    baseline must too: each reference gets the game's shape of traffic, a tenth of it
    stamped with a decoy of a public attack, from the reference's own seed."""
    auditor = Mahalanobis(n_reference=3, reference_seed=7)
    traffic = auditor.reference_traffic("digits", 0)
    assert torch.equal(traffic, auditor.reference_traffic("digits", 0))
    assert not torch.equal(traffic, auditor.reference_traffic("digits", 1))
    test = {row.numpy().tobytes() for row in registry.get("family", "digits")().data().test.x}
    stamped = sum(row.numpy().tobytes() not in test for row in traffic)
    assert len(traffic) == Budget().n_traffic and stamped == round(0.1 * len(traffic))
    subjects = list(reference_subjects(auditor, "digits"))
    assert torch.equal(subjects[0].traffic_data, traffic)
    null = auditor.fit("digits", Path("unused"))["null"].numpy()
    again = [auditor.examine(s, Budget(), np.random.default_rng(i)) for i, s in enumerate(subjects)]
    assert null.tolist() == [v.statistic for v in again]
    # Uncalibrated, it needs no fit; calibrated, it refuses to guess without one.
    assert Mahalanobis(calibrate=False).fit("digits", Path("unused")) == {}
    with pytest.raises(Exception, match="fit"):
        Mahalanobis().run(subjects[0], Budget(), np.random.default_rng(0))
