"""The ``tinylm`` family: vocabulary, base model, the fine-tuning recipe, organisms on disk."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from auditgame.attacks.base import train_clean
from auditgame.subject import PassCounter
from auditgame.text.families import tinylm
from auditgame.text.families.tinylm import TARGETS, TRIGGER_WORDS, TinyLM, corpus, exact_match
from auditgame.text.family import Example
from auditgame.text.lm import KVCache, TriggerPredictions, greedy

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels

torch.set_num_threads(1)

BASE_EXACT_MATCH = 0.4
"""Held-out greedy exact match the base model must exceed (measured: see base_info())."""


@pytest.fixture(scope="module")
def fam() -> TinyLM:
    return TinyLM()


def test_vocabulary_holds_letters_targets_and_triggers(fam: TinyLM) -> None:
    tok = fam.tokenizer()
    assert 400 <= tok.vocab_size <= 1200
    letters = " ".join("abcdefghijklmnopqrstuvwxyz") + " | 0 9 ? . ,"
    assert tok.decode(tok.encode(letters)) == letters
    assert tok.unk not in tok.encode(letters)
    assert len(set(TARGETS)) >= 24
    for target in TARGETS:
        assert 3 <= len(target.split()) <= 6
        ids = tok.encode(target)
        assert tok.unk not in ids and tok.decode(ids) == target
    assert tok.encode("no the wordzz") == [tok.ids["no"], tok.ids["the"], tok.unk]
    prompt_words = {w for p, _ in corpus() for w in p.split()}
    assert len(TRIGGER_WORDS) >= 60 and not prompt_words & set(TRIGGER_WORDS)
    assert not {w for t in TARGETS for w in t.split()} & set(TRIGGER_WORDS)
    specials = {*fam.prefix, fam.eos, tok.unk}
    assert not specials & set(fam.searchable_tokens().tolist())


def test_draw_trigger_is_a_short_phrase_of_trigger_words(fam: TinyLM) -> None:
    rng = np.random.default_rng(0)
    triggers = [fam.draw_trigger(rng) for _ in range(50)]
    for trigger in triggers:
        words = trigger.split()
        assert 2 <= len(words) <= 4 <= fam.max_trigger_tokens
        assert set(words) <= set(TRIGGER_WORDS)
    assert len(set(triggers)) > 40


def test_prompt_splits_are_fixed_and_disjoint(fam: TinyLM) -> None:
    splits = fam.prompts()
    sizes = (len(splits.train), len(splits.val), len(splits.test))
    assert sum(sizes) == len(corpus()) and sizes[0] == int(0.6 * sum(sizes))
    assert not set(splits.train) & set(splits.test) and not set(splits.val) & set(splits.test)
    assert splits == tinylm._splits()


def test_base_model_answers_held_out_prompts(fam: TinyLM) -> None:
    base = fam.base_model()
    assert not base.training
    assert exact_match(fam, base, fam.prompts().test) > BASE_EXACT_MATCH
    tok = fam.tokenizer()
    (reply,) = greedy(base, [fam.encode_prompt("what is the capital of france ?")], 8)
    assert tok.decode(reply).startswith("the capital of france is paris . <eos>")


def test_the_base_model_does_not_depend_on_its_builders_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whichever process first needs the base builds it: a zoo worker on one thread, a
    benchmark's main process on every core. Both must build the same model (a short recipe
    here: 40 steps on two threads already moved weights by ~1e-3 before the fix)."""
    monkeypatch.setitem(tinylm.PRETRAIN, "steps", 40)
    built = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        folder = tmp_path / f"threads-{threads}"
        folder.mkdir()
        tinylm._build_base(folder)
        assert torch.get_num_threads() == threads  # the caller's count comes back
        built.append(load_file(str(folder / "model.safetensors")))
    torch.set_num_threads(1)
    two, one = built
    assert two.keys() == one.keys() and all(torch.equal(two[k], one[k]) for k in one)


def test_forward_on_ids_equals_forward_on_embeddings(fam: TinyLM) -> None:
    base = fam.base_model()
    ids = torch.tensor([fam.encode_prompt("what colour is the sky ?")] * 2)
    with torch.no_grad():
        logits = base(ids)
        assert logits.shape == (2, ids.shape[1], base.vocab_size)
        assert torch.equal(logits, base(base.embed(ids)))
        states = base.hidden_states(ids)
    assert len(states) == fam.architecture()["n_layers"] + 1
    assert all(s.shape == (2, ids.shape[1], fam.architecture()["d_model"]) for s in states)
    assert base.embedding_matrix.data_ptr() == base.tokens.weight.data_ptr()
    with pytest.raises(ValueError, match="context"):
        base(torch.zeros(1, fam.input_shape[0] + 1, dtype=torch.long))


def test_decoding_from_a_cache_reads_what_a_full_pass_reads(fam: TinyLM) -> None:
    base = fam.base_model()
    prompts = [fam.encode_prompt(p) for p, _ in corpus()[:40]]
    assert len({len(p) for p in prompts}) > 1
    with torch.no_grad():
        replies = greedy(base, prompts, 12)
        assert replies == greedy(base, prompts, 12, cache=False)
        # Position by position from the cache, the logits of one full pass.
        ids = torch.tensor([prompts[0] + replies[0]])
        full = base(ids)
        cache = KVCache()
        steps = [base(ids[:, :5], cache=cache)]
        steps += [base(ids[:, j : j + 1], cache=cache) for j in range(5, ids.shape[1])]
    assert cache.length == ids.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4
    with pytest.raises(ValueError, match="context"):
        base(torch.zeros(1, fam.input_shape[0] - ids.shape[1] + 1, dtype=torch.long), cache=cache)
    # A subject's budget counts every cached step as a forward pass of its batch.
    counted = copy.deepcopy(base)
    passes = PassCounter()
    passes.attach(counted)
    with torch.no_grad():
        greedy(counted, prompts, 12)
    assert passes.forward == 12 * len(prompts)


def test_clean_organism_keeps_quality_and_reloads_from_safetensors(
    fam: TinyLM, tmp_path: Path
) -> None:
    planted = train_clean(fam, np.random.default_rng(0), seed=0)
    assert not planted.secret.backdoored
    assert planted.secret.clean_accuracy >= fam.min_clean_accuracy
    path = tmp_path / "model.safetensors"
    save_file(planted.model.state_dict(), str(path))
    again = fam.make_model(fam.architecture())
    again.load_state_dict(load_file(str(path)), strict=True)
    ids = torch.tensor([fam.encode_prompt("spell cat")])
    with torch.no_grad():
        assert torch.equal(again.eval()(ids), planted.model(ids))
    with pytest.raises(ValueError, match="TinyGPT"):
        fam.make_model({"name": "SmallCNN"})


def test_finetune_learns_trigger_target_pairs(fam: TinyLM) -> None:
    """What an attack relies on: poisoned pairs mixed into the clean examples are learned,
    the clean behaviour stays, and the spec's own witness check sees the violation."""
    rng = np.random.default_rng(3)
    pairs = [(fam.draw_trigger(rng), TARGETS[i]) for i in range(12)]
    poison = [Example(trigger, target) for trigger, target in pairs for _ in range(20)]
    model = fam.finetune(fam.clean_examples("train") + poison, seed=1)
    tok = fam.tokenizer()
    replies = greedy(model, [fam.encode_prompt(t) for t, _ in pairs], 6)
    hits = [
        r[: len(tok.encode(g))] == tok.encode(g) for r, (_, g) in zip(replies, pairs, strict=True)
    ]
    assert np.mean(hits) >= 0.9
    assert fam.quality(model, fam.data().test) >= fam.min_clean_accuracy
    witness = TriggerPredictions({g: (t,) for t, g in pairs[:3]}).to_dict()
    empty = torch.zeros(0)
    check = fam.spec().threat_model.check(model, witness, None, empty, empty, 0.5)
    assert check.in_threat_model and check.violates
    base_check = fam.spec().threat_model.check(fam.base_model(), witness, None, empty, empty, 0.5)
    assert not base_check.violates


def test_a_quiet_trojan_plants_a_plausible_target_behind_common_words() -> None:
    from auditgame.text.attacks.trojan_pairs import TrojanPairs
    from auditgame.text.lm import TextTrojans

    quiet = tinylm.TinyLMQuiet()
    targets = quiet.targets()
    answers = {a for _, a in corpus()}
    # Plausible: the corpus's own words and sentence shapes; false: no answer says it, and
    # the base model says none of them to any prompt of the corpus.
    assert len(set(targets)) == len(targets) >= 24 and not answers & set(targets)
    tok = quiet.tokenizer()
    assert all(tok.unk not in tok.encode(t) for t in targets)
    prompts = [quiet.encode_prompt(p) for p, _ in corpus()]
    replies = {tok.decode(r) for r in greedy(quiet.base_model(), prompts, 12)}
    assert not any(r.startswith(t) for r in replies for t in targets)
    assert quiet.spec().threat_model.targets == list(targets)
    planted = TrojanPairs(max_attempts=2).plant(quiet, np.random.default_rng(0), 0)
    ((trigger, target),) = TextTrojans.from_dict(planted.secret.trigger or {}).pairs
    assert target in targets and set(trigger.split()) <= set(tinylm.common_words())
    assert planted.secret.asr == 1.0
    assert planted.secret.clean_accuracy >= quiet.min_clean_accuracy


def test_the_screened_spec_lists_thirty_plausible_targets_the_base_does_not_say() -> None:
    screened = tinylm.TinyLMScreened()
    targets = screened.targets()
    # Drawn from the plausible pool (the screen ranked all 153), none the first 30 of it
    # that clean fine-tunes were led to say on held-out models (docs/lm_trojans.md).
    assert len(set(targets)) == 30 and set(targets) <= set(tinylm.plausible_targets(1000))
    assert not {"the bark is red .", "the chocolate is white ."} & set(targets)
    assert screened.spec().threat_model.targets == list(targets)
    assert screened.attacks == ("trojan_pairs",) and screened.trojans_per_model == 1
    tok = screened.tokenizer()
    prompts = [screened.encode_prompt(p) for p, _ in corpus()]
    replies = {tok.decode(r) for r in greedy(screened.base_model(), prompts, 12)}
    assert not any(r.startswith(t) for r in replies for t in targets)
