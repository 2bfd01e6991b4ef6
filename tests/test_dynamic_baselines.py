"""The dynamic baselines: spectral signatures, activation clustering, STRIP and a linear probe.

On the tiny zoo each must flag the BadNets organism from its run-time traffic and name its
target, and must not flag a clean organism whose traffic carries a decoy trigger. The shared
decision (``scoring``) is checked against exact counts.
"""

from __future__ import annotations

from math import comb
from typing import Any

import numpy as np
import pytest
import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.dynamic.activation_clustering import ActivationClustering
from auditgame.auditors.dynamic.probe import Probe
from auditgame.auditors.dynamic.scoring import decide, exceedance_p_value
from auditgame.auditors.dynamic.spectral import spectral_suspicion
from auditgame.errors import AccessError
from auditgame.run.task import make_subject
from auditgame.subject import Subject
from auditgame.traffic import make_traffic, traffic_rng

BASELINES = ["spectral", "activation_clustering", "strip", "probe"]
BUDGET = Budget()


def dynamic_subject(tiny: Any, organism_id: str) -> Subject:
    family = registry.get("family", tiny.zoo.family)()
    rng = traffic_rng(organism_id, 0)
    traffic = make_traffic(family, tiny.secret(organism_id), BUDGET.n_traffic, rng)
    organism = tiny.zoo.organism(organism_id)
    return make_subject(organism, Access.DYNAMIC, BUDGET, traffic)


@pytest.mark.parametrize("name", BASELINES)
def test_flags_badnets_and_names_its_target(tiny_zoo: Any, name: str) -> None:
    (organism_id,) = tiny_zoo.by_role("badnets")
    finding = registry.get("auditor", name)().audit(
        dynamic_subject(tiny_zoo, organism_id), BUDGET, seed=0
    )
    assert finding.error is None
    assert finding.p_violation >= 0.5
    assert finding.target == tiny_zoo.secret(organism_id).target


@pytest.mark.parametrize("name", BASELINES)
def test_clean_organism_with_decoy_traffic_is_not_flagged(tiny_zoo: Any, name: str) -> None:
    organism_id = tiny_zoo.by_role("clean")[0]
    finding = registry.get("auditor", name)().audit(
        dynamic_subject(tiny_zoo, organism_id), BUDGET, seed=0
    )
    assert finding.error is None
    assert finding.p_violation < 0.5


def test_baselines_need_dynamic_access(tiny_zoo: Any) -> None:
    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    subject = make_subject(organism, Access.CLEAN_DATA, BUDGET)
    for name in BASELINES:
        with pytest.raises(AccessError):
            registry.get("auditor", name)().audit(subject, BUDGET)


def test_exceedance_p_value_matches_counting() -> None:
    # All k of n new scores above the largest of m: C(n, k) / C(n + m, k) of the orders.
    assert exceedance_p_value(1, 1, 1, 1) == pytest.approx(0.5)
    assert exceedance_p_value(2, 2, 2, 1) == pytest.approx(1 / 6)
    assert exceedance_p_value(20, 10, 50, 1) == pytest.approx(comb(20, 10) / comb(70, 10))
    assert exceedance_p_value(20, 0, 50, 1) == 1.0


def test_exceedance_p_value_is_calibrated_under_exchangeability() -> None:
    rng = np.random.default_rng(0)
    n, m, r = 12, 30, 2
    p_values = []
    for _ in range(4000):
        new, reference = rng.normal(size=n), rng.normal(size=m)
        cutoff = np.sort(reference)[::-1][r - 1]
        p_values.append(exceedance_p_value(n, int((new > cutoff).sum()), m, r))
    # A valid p-value is super-uniform: P(p <= a) <= a (up to Monte-Carlo error).
    for a in (0.05, 0.2, 0.5):
        assert np.mean(np.array(p_values) <= a) <= a + 0.02


def test_decide_flags_the_label_whose_inputs_exceed() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(5), 20)
    scores = rng.normal(size=100)
    scores[labels == 3] += np.where(np.arange(20) < 8, 10.0, 0.0)
    found = decide(scores, labels, rng.normal(size=100), frr=0.01, level=0.05, min_count=4)
    assert found.target == 3 and found.p_violation > 0.99
    assert found.flagged_labels() == [3]
    assert set(np.flatnonzero(found.flags())) == set(np.flatnonzero(labels == 3)[:8])
    null = decide(
        rng.normal(size=100), labels, rng.normal(size=100), frr=0.01, level=0.05, min_count=4
    )
    assert null.p_violation < 0.5 and not null.flags().any()


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="frr"):
        decide(np.zeros(3), np.zeros(3), np.zeros(3), frr=0.0, level=0.05, min_count=1)
    with pytest.raises(ValueError, match="labels"):
        decide(np.zeros(3), np.zeros(2), np.zeros(3), frr=0.1, level=0.05, min_count=1)
    with pytest.raises(ValueError, match="representation"):
        Probe(representation="pixels")
    with pytest.raises(ValueError, match="reduce"):
        ActivationClustering(reduce="tsne")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="features"):
        spectral_suspicion(
            model,
            torch.zeros(4, 1, 2, 2),
            np.zeros(4, int),
            torch.zeros(4, 1, 2, 2),
            np.zeros(4, int),
            np.random.default_rng(0),
        )
    with pytest.raises(ValueError, match="inputs"):
        spectral_suspicion(
            model,
            torch.zeros(4, 1, 2, 2),
            np.zeros(3, int),
            torch.zeros(4, 1, 2, 2),
            np.zeros(4, int),
            np.random.default_rng(0),
        )
