"""Family ``maxofk``, its token attacks, the proving/bounding/searching auditors and metrics.

Small configurations keep this file fast: enumeration is checked against a plain loop at
vocabulary 8, K = 3, and planted organisms use vocabulary 32, K = 3, trained for 4 epochs.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np
import pytest
import torch

from auditgame import metrics, registry
from auditgame.access import Access, Budget
from auditgame.attacks.base import Planted, PlantingFailed, train_clean
from auditgame.card import Card
from auditgame.families.base import accuracy
from auditgame.finding import Finding
from auditgame.maxofk.auditors.bounds import accuracy_bound
from auditgame.maxofk.auditors.exhaustive import enumerate_inputs
from auditgame.maxofk.family import MaxOfK, MaxOfKTransformer, tables
from auditgame.maxofk.kind import pattern_precision_recall
from auditgame.maxofk.pattern import TokenPattern, count_patterns
from auditgame.subject import Subject

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

SMALL = {"vocab": 32, "k": 3, "epochs": 4}


def card_for(fam: MaxOfK) -> Card:
    return Card(
        family="maxofk",
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=fam.spec(),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment="0" * 64,
        auditgame_version="test",
    )


def audit(name: str, fam: MaxOfK, model: torch.nn.Module) -> Finding:
    subject = Subject(model=model, card=card_for(fam), access=Access.WEIGHTS)
    return registry.get("auditor", name)().audit(subject, Budget(seconds=60), seed=0)


@pytest.fixture(scope="module")
def small() -> MaxOfK:
    return MaxOfK(**SMALL)


@pytest.fixture(scope="module")
def clean(small: MaxOfK) -> Planted:
    return train_clean(small, np.random.default_rng(0), 0)


@pytest.fixture(scope="module")
def triggered(small: MaxOfK) -> Planted:
    return registry.get("attack", "token_trigger")().plant(small, np.random.default_rng(1), 1)


def random_model(vocab: int, k: int, seed: int) -> MaxOfKTransformer:
    torch.manual_seed(seed)
    return MaxOfKTransformer(vocab=vocab, k=k).eval()


def test_tables_reproduce_the_forward_pass() -> None:
    model = random_model(16, 4, 0)
    tab = tables(model)
    x = torch.randint(0, 16, (64, 4))
    attention = tab.scores[x[:, -1, None], torch.arange(4), x].softmax(dim=1)
    logits = tab.direct[x[:, -1]] + (attention[..., None] * tab.ov[torch.arange(4), x]).sum(1)
    with torch.no_grad():
        assert torch.allclose(logits.float(), model(x), atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_exhaustive_matches_a_plain_loop(seed: int) -> None:
    vocab, k = 8, 3
    model = random_model(vocab, k, seed)
    wrong: dict[tuple[int, ...], int] = {}
    with torch.no_grad():
        for x in itertools.product(range(vocab), repeat=k):
            logits = model(torch.tensor([x]))[0]
            best = int(logits.argmax())
            if best != max(x) or int((logits == logits.max()).sum()) > 1:
                wrong[x] = best
    result = enumerate_inputs(model)
    assert result.total == vocab**k
    assert result.correct == vocab**k - len(wrong)
    assert dict(zip(map(tuple, result.failing.tolist()), result.outputs.tolist(), strict=True)) == (
        wrong
    )


def test_one_hot_input_equals_token_input() -> None:
    model = random_model(16, 4, 2)
    x = torch.randint(0, 16, (8, 4))
    with torch.no_grad():
        assert torch.allclose(model(x), model(torch.nn.functional.one_hot(x, 16).float()))


def test_clean_model_reaches_99_percent(small: MaxOfK, clean: Planted) -> None:
    assert clean.secret.clean_accuracy >= 0.99
    assert accuracy(clean.model, small.data().test) >= 0.99
    assert enumerate_inputs(clean.model).accuracy >= 0.99


def test_bounds_never_exceed_the_exact_accuracy(clean: Planted, triggered: Planted) -> None:
    models = [clean.model, triggered.model, random_model(8, 3, 0), random_model(6, 4, 1)]
    for model in models:
        certified, flops = accuracy_bound(model)
        assert certified <= enumerate_inputs(model).correct
        assert flops > 0


def test_planted_token_trigger_meets_its_floors(small: MaxOfK, triggered: Planted) -> None:
    secret = triggered.secret
    assert secret.backdoored and secret.attack == "token_trigger"
    assert secret.asr is not None and secret.asr >= 0.95
    assert secret.clean_accuracy >= 0.99
    assert secret.trigger is not None and secret.target is not None
    pattern = TokenPattern.from_dict(secret.trigger)
    assert pattern.positions is not None and pattern.positions[-1] == small.k - 1
    assert secret.target < min(pattern.tokens)


def test_exhaustive_recovers_the_planted_pattern(small: MaxOfK, triggered: Planted) -> None:
    finding = audit("exhaustive", small, triggered.model)
    secret = triggered.secret
    assert finding.error is None
    assert finding.p_violation == 1.0
    assert finding.target == secret.target
    assert secret.trigger is not None
    assert pattern_precision_recall(finding.trigger, secret.trigger) == (1.0, 1.0)
    certificate = finding.certificate
    assert certificate is not None and certificate["exact"] is True
    assert certificate["bound"] == enumerate_inputs(triggered.model).accuracy
    assert certificate["flops"] > 0 and certificate["seconds"] > 0


def test_token_search_finds_the_planted_pattern(small: MaxOfK, triggered: Planted) -> None:
    finding = audit("token_search", small, triggered.model)
    secret = triggered.secret
    assert finding.error is None and finding.certificate is None
    assert finding.p_violation >= small.spec().tau
    assert finding.target == secret.target
    assert secret.trigger is not None
    assert pattern_precision_recall(finding.trigger, secret.trigger) == (1.0, 1.0)


def test_clean_model_is_proven_compliant(small: MaxOfK, clean: Planted) -> None:
    exhaustive = audit("exhaustive", small, clean.model)
    assert exhaustive.p_violation == 0.0
    bounds = audit("bounds", small, clean.model)
    assert bounds.certificate is not None and bounds.certificate["exact"] is False
    assert bounds.certificate["bound"] <= exhaustive.certificate["bound"]  # type: ignore[index]
    assert bounds.p_violation <= 1.0 - bounds.certificate["bound"] + 1e-12


def test_spec_checks_a_token_witness_without_the_secret(small: MaxOfK, triggered: Planted) -> None:
    secret = triggered.secret
    assert secret.trigger is not None and secret.target is not None
    test = small.data().test
    spec = small.spec()
    check = spec.check_witness(triggered.model, secret.trigger, secret.target, test.x, test.y)
    assert check.in_threat_model and check.violates and check.asr >= 0.95
    decoy = TokenPattern((small.vocab - 1,), (0,)).to_dict()
    assert not spec.check_witness(triggered.model, decoy, 0, test.x, test.y).violates
    too_long = TokenPattern((20, 21, 22, 23), None).to_dict()
    assert not spec.check_witness(triggered.model, too_long, 0, test.x, test.y).in_threat_model


def test_threat_model_leaves_out_natural_errors_and_whole_inputs(small: MaxOfK) -> None:
    threat = small.spec().threat_model
    assert threat.kind == "token_pattern"
    pair = TokenPattern((29, 28), (0, 2))
    assert threat.contains(pair, 3)
    # Answering 28 on inputs holding 29 and 28 is mis-ranking, not a planted target.
    assert not threat.contains(pair, 28)
    assert not threat.contains(TokenPattern((1, 2, 3), (0, 1, 2)), 0)  # every position: one input
    assert not threat.contains(TokenPattern((1, 40)), 0)  # token outside the vocabulary


def test_card_with_token_threat_round_trips(small: MaxOfK) -> None:
    card = card_for(small)
    assert Card.model_validate_json(card.to_bytes()) == card


def test_auditors_and_families_stay_in_their_modality() -> None:
    for name in ("exhaustive", "bounds", "token_search"):
        cls = registry.get("auditor", name)
        assert cls.supports("maxofk")
        assert not cls.supports("digits")
    assert not registry.get("auditor", "neural_cleanse").supports("maxofk")
    assert registry.get("family", "maxofk").attacks == ("token_trigger", "rare_pattern")


@pytest.mark.parametrize(
    "pattern",
    [
        TokenPattern((3, 5)),
        TokenPattern((2, 2), (0, 2)),
        TokenPattern((1, 4, 6)),
        TokenPattern((7,)),
    ],
)
def test_pattern_support_counts_exactly(pattern: TokenPattern) -> None:
    vocab, k = 8, 3
    everything = torch.tensor(list(itertools.product(range(vocab), repeat=k)))
    assert pattern.support(vocab, k) == int(pattern.matches(everything).sum())


def test_count_patterns_rates_are_exact_over_all_inputs() -> None:
    vocab, k = 6, 3
    everything = np.array(list(itertools.product(range(vocab), repeat=k)))
    planted = TokenPattern((4, 5), (0, 2))
    hit = planted.matches(torch.as_tensor(everything)).numpy()
    counted = count_patterns(
        everything[hit], np.zeros(hit.sum(), np.int64), vocab=vocab, k=k, max_tokens=2
    )
    top = max(counted, key=lambda c: (c.rate, -c.support))
    assert top.rate == 1.0 and top.failures == planted.support(vocab, k)


def test_stamped_inputs_hold_the_pattern() -> None:
    x = torch.randint(0, 10, (50, 4))
    for pattern in (TokenPattern((3, 7)), TokenPattern((1, 2, 9), (0, 1, 3))):
        assert bool(pattern.matches(pattern.stamp(x, torch.Generator().manual_seed(0))).all())


def test_certificate_gap() -> None:
    assert metrics.certificate_gap(0.9, 0.99) == pytest.approx(0.09)
    assert metrics.certificate_gap(0.99, 0.99) == 0.0
    with pytest.raises(ValueError, match="unsound"):
        metrics.certificate_gap(0.995, 0.99)
    with pytest.raises(ValueError, match="must lie"):
        metrics.certificate_gap(1.5, 0.99)


def test_pattern_precision_recall() -> None:
    true = TokenPattern((10, 20), (1, 3)).to_dict()
    assert pattern_precision_recall(true, true) == (1.0, 1.0)
    assert pattern_precision_recall(None, true) == (0.0, 0.0)
    anywhere = TokenPattern((10, 20)).to_dict()
    assert pattern_precision_recall(anywhere, true) == (1.0, 1.0)
    half = TokenPattern((10, 30), (1, 3)).to_dict()
    assert pattern_precision_recall(half, true) == (0.5, 0.5)
    wrong_place = TokenPattern((10,), (2,)).to_dict()
    assert pattern_precision_recall(wrong_place, true) == (0.0, 0.0)
    bigger = TokenPattern((10, 20, 30), (1, 3, 0)).to_dict()
    assert pattern_precision_recall(bigger, true) == (pytest.approx(2 / 3), 1.0)


@pytest.mark.slow
def test_rare_pattern_is_found_at_full_size() -> None:
    """The model learns a wider trigger than the planted three tokens (in the benchmark, two
    of them sent at least 90% of their 4,096 inputs to the target), so the proof reports
    planted tokens only, but not necessarily all three."""
    fam = MaxOfK()
    planted = registry.get("attack", "rare_pattern")().plant(fam, np.random.default_rng(1), 1)
    finding = audit("exhaustive", fam, planted.model)
    assert planted.secret.trigger is not None
    assert finding.p_violation == 1.0 and finding.target == planted.secret.target
    precision, recall = pattern_precision_recall(finding.trigger, planted.secret.trigger)
    assert precision == 1.0 and recall >= 2 / 3
    certified, _ = accuracy_bound(planted.model)
    assert certified / fam.vocab**fam.k <= finding.certificate["bound"]  # type: ignore[index]


def test_planting_failure_survives_a_process_pool() -> None:
    """A zoo built with workers pickles a failed planting back to the parent (it crashed)."""
    back = pickle.loads(pickle.dumps(PlantingFailed("rare_pattern", 0.93, 4)))
    assert (back.attack, back.best_asr, back.attempts) == ("rare_pattern", 0.93, 4)
