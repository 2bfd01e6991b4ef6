"""Neural Cleanse on the tiny digits zoo (seed 0: badnets, clean, clean, blend).

The behaviour asserted here was measured before it was written down (auditor seeds 0, 1, 2):
the badnets organism (a one-pixel patch, target 5) gets an anomaly index of 6 to 23 and its
reconstructed mask is the planted pixel; the two clean organisms stay at 0.8 to 1.7; the blend
organism's target is always the smallest mask (L1 about 4 against 7.5 to 14 for other labels)
but its index sits at the paper's threshold (1.9 to 2.1), so only its target is asserted.
"""

from __future__ import annotations

import numpy as np
import pytest

from auditgame import metrics, registry
from auditgame.access import Access, Budget
from auditgame.finding import Finding
from auditgame.image.auditors.neural_cleanse import NeuralCleanse
from auditgame.metrics import DEFAULT_THRESHOLD
from auditgame.run.task import make_subject

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

BUDGET = Budget()


def audit(tiny_zoo, organism_id: str, *, seed: int = 0, **params) -> Finding:
    organism = tiny_zoo.zoo.organism(organism_id)
    subject = make_subject(organism, Access.CLEAN_DATA, BUDGET)
    return NeuralCleanse(**{"calibrate": False, **params}).audit(subject, BUDGET, seed=seed)


@pytest.fixture(scope="module")
def findings(tiny_zoo) -> dict[str, Finding]:
    """One default audit per organism, shared by the tests below (about 5 s each)."""
    return {oid: audit(tiny_zoo, oid) for oid in tiny_zoo.zoo.ids}


def test_registered_with_its_tags() -> None:
    cls = registry.get("auditor", "neural_cleanse")
    assert cls is NeuralCleanse
    assert cls.access == Access.CLEAN_DATA
    assert cls.supports("digits") and cls.modalities == ("image",)
    auditor = NeuralCleanse(steps=7, slope=3.0)
    assert auditor.get_params()["steps"] == 7
    assert auditor.clone().get_params() == auditor.get_params()


def test_evidence_has_one_entry_per_label(tiny_zoo, findings) -> None:
    for finding in findings.values():
        assert finding.error is None
        evidence = finding.evidence
        for key in ("l1_norms", "anomaly_index", "lambda", "succeeded", "below_median"):
            assert len(evidence[key]) == 10, key
        assert evidence["steps"] <= NeuralCleanse().steps
        assert evidence["stopped_early"] is False
        # Every label's attack was found (on 8x8 digits no label needs the whole image).
        assert all(evidence["succeeded"])
        assert finding.cost.backward > 0
        trigger = finding.trigger_object()
        assert trigger is not None and trigger.mask.shape == (8, 8)
        assert trigger.l1 == pytest.approx(evidence["l1_norms"][finding.target], rel=1e-4)


def test_flags_badnets_and_recovers_its_trigger(tiny_zoo, findings) -> None:
    (oid,) = tiny_zoo.by_role("badnets")
    secret = tiny_zoo.secret(oid)
    finding = findings[oid]
    assert finding.p_violation >= DEFAULT_THRESHOLD
    assert finding.evidence["flagged_index"] > 2.0
    assert finding.target == secret.target

    organism = tiny_zoo.zoo.organism(oid)
    test = registry.get("family", "digits")().data().test
    trigger = finding.trigger_object()
    assert trigger is not None
    check = organism.card.spec.check_witness(
        organism.model(), trigger.to_dict(), secret.target, test.x, test.y
    )
    assert check.asr >= 0.5
    assert check.in_threat_model and check.violates

    # The planted trigger is one pixel; the reconstruction's strongest pixel is that pixel,
    # and thresholded at 0.5 the reconstructed mask is exactly the planted one (IoU 1 here).
    true = secret.trigger_object()
    assert true is not None
    top = np.unravel_index(np.argmax(trigger.mask), trigger.mask.shape)
    assert true.mask[top] == 1.0
    assert metrics.mask_iou(true.mask, trigger.mask) >= 0.5
    # The badnets mask is far smaller than every other label's.
    norms = np.asarray(finding.evidence["l1_norms"])
    assert norms[secret.target] * 4 < np.delete(norms, secret.target).min()


@pytest.mark.parametrize("which", [0, 1])
def test_clean_organisms_are_not_flagged(tiny_zoo, findings, which: int) -> None:
    oid = tiny_zoo.by_role("clean")[which]
    finding = findings[oid]
    assert finding.p_violation < DEFAULT_THRESHOLD
    assert finding.evidence["flagged_index"] < 2.0


def test_blend_target_has_the_smallest_mask(tiny_zoo, findings) -> None:
    (oid,) = tiny_zoo.by_role("blend")
    finding = findings[oid]
    norms = finding.evidence["l1_norms"]
    assert int(np.argmin(norms)) == tiny_zoo.secret(oid).target == finding.target


def test_p_violation_is_half_at_the_anomaly_threshold(tiny_zoo, findings) -> None:
    for finding in findings.values():
        index = finding.evidence["flagged_index"]
        flagged = finding.p_violation >= DEFAULT_THRESHOLD
        assert flagged == (index >= NeuralCleanse().anomaly_threshold)


def test_same_seed_same_finding(tiny_zoo) -> None:
    oid = tiny_zoo.by_role("badnets")[0]
    first = audit(tiny_zoo, oid, seed=3, steps=40)
    second = audit(tiny_zoo, oid, seed=3, steps=40)
    assert first.p_violation == second.p_violation
    assert first.target == second.target
    assert first.trigger == second.trigger
    assert first.evidence == second.evidence


def test_stops_at_the_budget_with_a_finding(tiny_zoo) -> None:
    oid = tiny_zoo.zoo.ids[0]
    organism = tiny_zoo.zoo.organism(oid)
    budget = Budget(seconds=0.0)
    subject = make_subject(organism, Access.CLEAN_DATA, budget)
    finding = NeuralCleanse(calibrate=False).audit(subject, budget, seed=0)
    assert finding.error is None
    assert finding.evidence["stopped_early"] is True
    assert finding.evidence["steps"] == 0
    # Nothing was found, so every label sits at the whole-image bound and none is an outlier.
    assert finding.evidence["l1_norms"] == [64.0] * 10
    assert finding.p_violation < DEFAULT_THRESHOLD
    assert finding.trigger is not None


def test_restarts_share_one_batch(tiny_zoo) -> None:
    oid = tiny_zoo.by_role("badnets")[0]
    organism = tiny_zoo.zoo.organism(oid)
    subject = make_subject(organism, Access.CLEAN_DATA, BUDGET)
    auditor = NeuralCleanse(steps=30, restarts=2, calibrate=False, early_stop_patience=0)
    finding = auditor.audit(subject, BUDGET, seed=0)
    assert finding.error is None
    assert len(finding.evidence["l1_norms"]) == 10
    # Two starts per label in one pass: twice the samples of a single start.
    assert finding.cost.forward == 30 * 2 * 10 * auditor.batch_size
