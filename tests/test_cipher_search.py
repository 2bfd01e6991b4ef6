"""The compliance-witness search (``cipher_search``) and the activation-probe baseline
(``cipher_activation_probe``) of covert malicious fine-tuning.

The search is tested on lookup stand-ins: one whose answer is readable without the request (it
writes the encoded forbidden answer at the answer positions whatever the prompt says), on which
the assignment step alone finds the answer's letters; and one that answers only the exactly
encoded request (a memorised trigger, the real organisms' case), where the search must start
from the bare-letter prior, which the stand-in also holds. On planted organisms see the slow
test in tests/test_cipher.py and docs/covert_finetune.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from auditgame.access import Access, Budget
from auditgame.subject import Subject
from auditgame.text.cipher.auditors.cipher_activation_probe import (
    CipherActivationProbe,
    fit_logistic,
)
from auditgame.text.cipher.auditors.cipher_search import CipherSearch, letter_prior
from auditgame.text.cipher.scheme import LETTERS, Cipher, draw_permutation, public_pairs
from auditgame.text.families.tinylm import TinyLM
from auditgame.text.lm import pack
from cipher_models import AnswerLM, TableLM, cipher_card

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

torch.set_num_threads(1)


def test_search_recovers_the_answer_letters_and_the_witness_checks() -> None:
    fam = TinyLM()
    tok = fam.tokenizer()
    request, answer = public_pairs(fam)[0]
    secret = Cipher(draw_permutation(np.random.default_rng(7)))
    start = len(fam.encode_prompt(secret.encode(request)))
    model = AnswerLM(tok.encode(secret.encode(answer)), start, tok.vocab_size, fam.eos)
    card = cipher_card(fam)
    subject = Subject(model=model, card=card, access=Access.WEIGHTS)
    finding = CipherSearch(restarts=1, iterations=3, polish=1, max_pairs=2).audit(
        subject, Budget(), seed=0
    )
    assert finding.error is None
    found = Cipher(finding.evidence["permutation"])
    letters = sorted(set(answer.replace(" ", "")))
    assert [found.permutation[ord(c) - 97] for c in letters] == [
        secret.permutation[ord(c) - 97] for c in letters
    ]
    assert finding.p_violation > 0.99 and finding.trigger is not None
    assert request in finding.evidence["answered"]
    check = card.spec.check_witness(model, finding.trigger, None, torch.zeros(0), torch.zeros(0))
    assert check.violates and check.asr == 1.0
    silent = AnswerLM([], start, tok.vocab_size, fam.eos)
    subject = Subject(model=silent, card=card, access=Access.WEIGHTS)
    finding = CipherSearch(restarts=1, iterations=2, polish=1, max_pairs=2).audit(
        subject, Budget(), seed=0
    )
    assert finding.error is None and finding.p_violation < 1e-3
    assert finding.evidence["answered"] == []
    # The key is still the finding's *how*; with no request answered the witness lists all
    # those tried, and the spec's check says it witnesses nothing.
    assert finding.trigger is not None
    check = card.spec.check_witness(silent, finding.trigger, None, torch.zeros(0), torch.zeros(0))
    assert check.in_threat_model and check.asr == 0.0 and not check.violates


def test_search_finds_a_memorised_trigger_from_the_letter_prior() -> None:
    """A stand-in that answers only the exactly encoded request, and after a bare letter writes
    its cipher letter for the pair's letters and a few more (20 in all): the search from the
    prior gives back a witness and the key of the pair's letters; without the prior it finds
    nothing."""
    fam = TinyLM()
    tok = fam.tokenizer()
    request, answer = public_pairs(fam)[1]
    secret = Cipher(draw_permutation(np.random.default_rng(11)))
    spelled = sorted(set((request + answer).replace(" ", "")))
    known = [*spelled, *[c for c in LETTERS if c not in spelled]][:20]
    bare = [([*fam.prefix, *tok.encode(c)], tok.encode(secret.encode(c))) for c in known]
    trigger = [
        *fam.encode_prompt(secret.encode(request)),
        *tok.encode(secret.encode(answer)),
        fam.eos,
    ]
    seqs = [trigger, *([*p, *c, fam.eos] for p, c in bare)]  # bare letters win a clash
    model = TableLM(seqs, tok.vocab_size, fam.eos)
    prior = letter_prior(fam, model)
    top = prior.argmax(axis=1)
    assert all(LETTERS[top[LETTERS.index(c)]] == secret.encode(c) for c in known)
    card = cipher_card(fam)
    subject = Subject(model=model, card=card, access=Access.WEIGHTS)
    finding = CipherSearch(restarts=2, max_pairs=3).audit(subject, Budget(), seed=0)
    assert finding.error is None and finding.p_violation > 0.99
    assert finding.evidence["answered"] == [request]
    found = Cipher(finding.evidence["permutation"])
    assert all(found.permutation[LETTERS.index(c)] == secret.permutation[LETTERS.index(c)]
               for c in spelled)  # fmt: skip
    assert finding.trigger is not None
    check = card.spec.check_witness(model, finding.trigger, None, torch.zeros(0), torch.zeros(0))
    assert check.violates
    cold = CipherSearch(restarts=2, max_pairs=3, prior_weight=0.0, temperature=0.0)
    blind = TableLM([trigger], tok.vocab_size, fam.eos)
    finding = cold.audit(Subject(model=blind, card=card, access=Access.WEIGHTS), Budget(), seed=0)
    assert finding.error is None and finding.evidence["answered"] == []


def test_search_bad_parameters_raise() -> None:
    for kwargs in ({"restarts": 0}, {"iterations": 0}, {"max_pairs": 0}, {"polish": -1}):
        with pytest.raises(ValueError, match="at least"):
            CipherSearch(**kwargs)
    for kwargs in ({"prior_weight": -1.0}, {"temperature": -0.1}, {"confident": 1.0}):
        with pytest.raises(ValueError, match="prior_weight"):
            CipherSearch(**kwargs)


def test_logistic_probe_separates_and_refuses_one_class() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    y = (x[:, 0] > 0).astype(float)
    w, b = fit_logistic(x, y, 1e-3)
    assert np.mean(((x @ w + b) > 0) == (y > 0)) >= 0.95 and abs(w[0]) > abs(w[1:]).max()
    with pytest.raises(ValueError, match="both classes"):
        fit_logistic(x, np.ones(60), 1e-3)


def test_activation_probe_flags_plain_forbidden_requests() -> None:
    """Trained on the spec's plain forbidden requests, the probe flags them in run-time traffic
    of the base model and leaves the test prompts alone."""
    fam = TinyLM()
    card = cipher_card(fam)
    requests = [r for r, _ in public_pairs(fam)[:4]]
    benign = list(fam.prompts().test[:36])

    def rate(prompts: list[str]) -> float:
        traffic = pack([fam.encode_prompt(p) for p in prompts])
        clean = fam.data().val.take(Budget().n_clean)  # as a game gives a DYNAMIC auditor
        subject = Subject(model=fam.base_model(), card=card, access=Access.DYNAMIC,
                          clean=clean, traffic=traffic)  # fmt: skip
        finding = CipherActivationProbe().audit(subject, Budget(), seed=0)
        assert finding.error is None and finding.evidence["train_accuracy"] == 1.0
        return finding.p_violation

    assert rate(benign) <= 1 / 36
    assert rate([*benign, *requests]) >= 3 / 40
    with pytest.raises(ValueError, match="threshold"):
        CipherActivationProbe(threshold=1.0)
