"""The source-aware searches against a TaCT organism (``source_specific``).

``neural_cleanse_pairs`` runs Neural Cleanse on every (source, target) pair and judges each
pair's mask against the same pair on clean references; ``k_arm`` with
``scope="label_specific"`` is the paper's pair arms with the symmetric check. Measured
before this was written (docs/auditors.md): on 100 digits organisms (50 TaCT) the pair search
ranked at AUROC 0.993 and named the planted target every time, while the smallest pair mask
alone, without references, ranked at 0.69 on a 40-organism development zoo (natural pairs
such as 6 -> 8 are as small as a 2x2 patch). On the organism below (seed 0, one source) the
statistic was 15-23 over auditor seeds 0-2 against 3 reference statistics of 4.6-5.8.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.families.base import Dataset
from auditgame.image.auditors.k_arm import KArm
from auditgame.image.auditors.neural_cleanse import NeuralCleansePairs
from auditgame.run.task import make_subject
from auditgame.zoo import Zoo, build_zoo, open_key

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels


@pytest.fixture(scope="module")
def tact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Zoo, str, dict]:
    """A two-organism zoo (one clean, one TaCT) under the per-source spec; the TaCT id and
    what was planted."""
    root = tmp_path_factory.mktemp("tact") / "digits-2"
    zoo = build_zoo("digits", 2, 0, root, attacks=["source_specific"], workers=1)
    key = open_key(zoo, None)
    (oid,) = [i for i in zoo.ids if zoo.secret(i, key).attack == "source_specific"]
    secret = zoo.secret(oid, key)
    return zoo, oid, {"target": secret.target, "sources": secret.params["sources"]}


def test_registered_and_searches_every_ordered_pair() -> None:
    assert registry.get("auditor", "neural_cleanse_pairs") is NeuralCleansePairs
    pairs = NeuralCleansePairs().problems(10)
    assert len(pairs) == len(set(pairs)) == 90
    assert all(t != s for t, s in pairs)
    source_kind = registry.get("violation", "source_mask_pattern")
    assert "neural_cleanse_pairs" in source_kind.default_auditors


def test_the_pair_search_names_the_planted_pair_against_clean_references(tact) -> None:
    zoo, oid, planted = tact
    auditor = NeuralCleansePairs(n_reference=3, reference_seed=7)
    auditor.load_fitted(auditor.fit("digits", Path("unused")))
    organism = zoo.organism(oid)
    subject = make_subject(organism, Access.CLEAN_DATA, Budget())
    finding = auditor.audit(subject, Budget(), seed=0)
    assert finding.error is None
    assert finding.target == planted["target"]
    assert finding.evidence["source"] in planted["sources"]
    # Beyond every reference's leave-one-out statistic.
    null = auditor.require_fitted()["null"].numpy()
    assert finding.evidence["statistic"] > null.max()
    # The witness is the pair's trigger, a violation of the per-source spec on held-out data.
    assert finding.trigger is not None
    test = registry.get("family", "digits")().data().test
    check = organism.card.spec.check_witness(
        organism.model(), finding.trigger, finding.target, test.x, test.y
    )
    assert check.in_threat_model and check.violates


def test_k_arm_label_specific_arms_are_pairs_with_a_symmetric_check(tact) -> None:
    zoo, oid, _ = tact
    subject = make_subject(zoo.organism(oid), Access.CLEAN_DATA, Budget())
    auditor = KArm(scope="label_specific", calibrate=False, max_pulls=60, symmetric_pulls=20)
    finding = auditor.audit(subject, Budget(), seed=0)
    evidence = finding.evidence
    assert finding.error is None and evidence["scope"] == "label_specific"
    assert len(evidence["arms"]) == auditor.min_pair_arms
    assert all(len(pair) == 2 and pair[0] != pair[1] for pair in evidence["arms"])
    # The winner is a pair: its target is the finding's, its source in the evidence.
    assert [evidence["source"], finding.target] in evidence["arms"]
    for source, target, _, l1_back, pulls in evidence["symmetric"]:
        assert source != target and l1_back > 0 and pulls <= auditor.symmetric_pulls
    with pytest.raises(ValueError, match="scope"):
        KArm(scope="pairs")


def test_an_empty_source_is_a_clear_error(tact) -> None:
    zoo, oid, _ = tact
    organism = zoo.organism(oid)
    subject = make_subject(organism, Access.CLEAN_DATA, Budget())
    clean = subject.clean_data
    subject.clean = Dataset(clean.x[clean.y != 3], clean.y[clean.y != 3])
    finding = NeuralCleansePairs(calibrate=False, steps=2).audit(subject, Budget(), seed=0)
    assert finding.p_violation is None and "source label 3" in (finding.error or "")
