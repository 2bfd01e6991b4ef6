"""K-Arm on the tiny digits zoo (seed 0: badnets, clean, clean, blend).

Measured before it was written down (auditor seeds 0 and 1): the badnets organism (a
one-pixel patch, target 5) is pre-screened second of ten, the scheduler gives its arm most
pulls and its mask shrinks to the planted pixel (L1 0.93); the clean organisms' smallest
masks stay at L1 8.8 to 10.7, above the bound of 0.08 * 64 = 5.1 pixels.
"""

from __future__ import annotations

import numpy as np
import pytest

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.finding import Finding
from auditgame.image.auditors.k_arm import KArm
from auditgame.metrics import DEFAULT_THRESHOLD
from auditgame.run.task import check_witness, make_subject

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

BUDGET = Budget()


def audit(tiny_zoo, organism_id: str, *, seed: int = 0, **params) -> Finding:
    organism = tiny_zoo.zoo.organism(organism_id)
    subject = make_subject(organism, Access.CLEAN_DATA, BUDGET)
    return KArm(**{"calibrate": False, **params}).audit(subject, BUDGET, seed=seed)


@pytest.fixture(scope="module")
def findings(tiny_zoo) -> dict[str, Finding]:
    """One default audit of the badnets and the clean organisms (about 1-2 s each)."""
    ids = tiny_zoo.by_role("badnets") + tiny_zoo.by_role("clean")
    return {oid: audit(tiny_zoo, oid) for oid in ids}


def test_registered_with_its_tags() -> None:
    cls = registry.get("auditor", "k_arm")
    assert cls is KArm
    assert cls.access == Access.CLEAN_DATA
    assert cls.supports("digits") and not cls.supports("rff")
    assert KArm(beta=3.0).clone().get_params()["beta"] == 3.0


def test_flags_badnets_with_the_planted_target(tiny_zoo, findings) -> None:
    (oid,) = tiny_zoo.by_role("badnets")
    finding = findings[oid]
    target = tiny_zoo.secret(oid).target
    assert finding.error is None
    assert finding.p_violation > DEFAULT_THRESHOLD
    assert finding.target == target
    # The witness is a real violation of the spec on held-out data.
    organism = tiny_zoo.zoo.organism(oid)
    check = check_witness(organism, finding)
    assert check is not None and check.asr >= organism.card.spec.tau and check.in_threat_model
    evidence = finding.evidence
    arm = evidence["arms"].index(target)
    # The scheduler spent more pulls on the target's arm than on any other.
    assert evidence["arm_pulls"][arm] == max(evidence["arm_pulls"])
    assert evidence["best_l1"] < 2.0


@pytest.mark.parametrize("which", [0, 1])
def test_clean_organisms_are_not_flagged(tiny_zoo, findings, which: int) -> None:
    finding = findings[tiny_zoo.by_role("clean")[which]]
    assert finding.error is None
    assert finding.p_violation < DEFAULT_THRESHOLD
    assert finding.evidence["best_l1"] > KArm().size_bound * 64


def test_arms_are_the_most_frequent_labels_of_the_pre_screen(findings) -> None:
    for finding in findings.values():
        evidence = finding.evidence
        frequency = np.asarray(evidence["screen_frequency"])
        assert len(frequency) == 10 and len(evidence["arms"]) == KArm().min_arms
        # No digits label reaches the paper's 0.95, so the arms are the top min_arms.
        assert frequency.max() < KArm().screen_threshold
        assert sorted(frequency[evidence["arms"]]) == sorted(frequency)[-KArm().min_arms :]
        assert sum(evidence["arm_pulls"]) == evidence["pulls"] == len(evidence["schedule"])


def test_cheaper_than_a_full_neural_cleanse(findings) -> None:
    # Neural Cleanse's default costs up to 300 steps x 10 labels x 32 images (measured
    # 33k-45k with its early stop); K-Arm stays well below.
    for finding in findings.values():
        assert finding.cost.forward < 35_000


def test_same_seed_same_finding(tiny_zoo) -> None:
    oid = tiny_zoo.by_role("badnets")[0]
    first = audit(tiny_zoo, oid, seed=3, max_pulls=30)
    second = audit(tiny_zoo, oid, seed=3, max_pulls=30)
    assert first.evidence == second.evidence
    assert first.trigger == second.trigger and first.p_violation == second.p_violation


def test_stops_at_the_budget_with_a_finding(tiny_zoo) -> None:
    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    budget = Budget(seconds=0.0)
    finding = KArm(calibrate=False).audit(make_subject(organism, Access.CLEAN_DATA, budget), budget)
    assert finding.error is None
    assert finding.evidence["stopped_early"] is True and finding.evidence["pulls"] == 0
    # Nothing was found: the whole image is the size, far above the bound.
    assert finding.evidence["best_l1"] == 64.0
    assert finding.p_violation < DEFAULT_THRESHOLD
    assert finding.trigger is not None
