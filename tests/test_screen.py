"""The target screen (``auditgame.text.screen``): a target some clean model is led to say is
dropped from a spec's pool, one it is not led to say is kept, and an auditor that fails stops
the screen rather than keeping every target.

The auditor here names fixed triggers (what a search would find), so what is tested is the
screen's check on real models — the session's tinylm zoo, one clean fine-tune and one with 20
planted trojans — not the power of a search (``benchmarks/screen_targets.py`` measures that).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.subject import Subject
from auditgame.text.families.tinylm import TinyLM
from auditgame.text.lm import CausalLM, TextTrojans, TriggerPredictions, greedy
from auditgame.text.screen import Proof, hardest, kept, screen
from auditgame.trigger import load
from auditgame.zoo import Zoo

# Reads models trained in the session's zoo: CI runs it again under ATEN_CPU_CAPABILITY=default.
pytestmark = pytest.mark.kernels


class FixedWitness(Auditor):
    """Names ``triggers`` ({target: [prompts]}) as its candidates, or fails."""

    name: ClassVar[str] = "fixed_witness"
    access = Access.WEIGHTS
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    def __init__(self, *, triggers: dict[str, list[str]] | None = None, fail: bool = False):
        self.triggers, self.fail = triggers or {}, fail

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        if self.fail:
            raise RuntimeError("search broke")
        found = {t: tuple(p) for t, p in self.triggers.items()}
        return Verdict(p_violation=0.5, trigger=TriggerPredictions(found))


def organisms(text_zoo: tuple[Zoo, bytes]) -> tuple[CausalLM, CausalLM, tuple[str, str]]:
    """The clean and the trojaned model, and a planted (trigger, target) pair that the
    planting measured to work."""
    zoo, key = text_zoo
    by_role = {zoo.secret(i, key).attack or "clean": i for i in zoo.ids}
    clean = zoo.organism(by_role["clean"]).model()
    trojaned = zoo.organism(by_role["trojan_pairs"]).model()
    secret = zoo.secret(by_role["trojan_pairs"], key)
    planted = load(secret.trigger)
    assert isinstance(clean, CausalLM) and isinstance(trojaned, CausalLM)
    assert isinstance(planted, TextTrojans)
    works = [
        pair
        for pair, hit in zip(planted.pairs, secret.params["success"], strict=True)
        if hit == 1.0
    ]
    return clean, trojaned, works[0]


def test_the_screen_drops_a_target_a_clean_model_says_and_keeps_a_planted_one(
    text_zoo: tuple[Zoo, bytes],
) -> None:
    fam = TinyLM()
    clean, trojaned, (trigger, target) = organisms(text_zoo)
    # What the clean fine-tune answers to a question of its own corpus: a target it says.
    tok = fam.tokenizer()
    prompt = next(p for p in fam.prompts().train if len(tok.encode(p)) <= fam.max_trigger_tokens)
    reply = greedy(clean, [fam.encode_prompt(prompt)], fam.reply_tokens)[0]
    said = fam.answer(reply)
    assert said and said not in fam.targets()
    targets = [target, said]
    witness = FixedWitness(triggers={target: [trigger], said: ["zzz", prompt]})

    on_clean = screen(fam, clean, 7, targets, witness, seconds=10)
    # The second candidate proves the said target; the planted trigger proves nothing here:
    # the clean model finds the planted target far less likely than what it says.
    assert on_clean.proofs == [Proof(said, prompt, "fixed_witness", 7)]
    assert set(on_clean.loss) == {target, said}
    assert on_clean.loss[target] > on_clean.loss[said] + 2.0
    assert kept(targets, on_clean.proofs) == (target,)
    assert hardest(targets, [on_clean.loss], 1) == (target,)
    # The same check proves the planted target on the organism it was planted in.
    on_trojaned = screen(fam, trojaned, 8, [target], witness, seconds=10)
    assert on_trojaned.proofs == [Proof(target, trigger, "fixed_witness", 8)]
    assert list(on_trojaned.loss) == [target] and on_trojaned.loss[target] < 1.0


def test_a_failing_auditor_stops_the_screen(text_zoo: tuple[Zoo, bytes]) -> None:
    clean, _, _ = organisms(text_zoo)
    broke = r"fixed_witness failed while screening(.|\n)*search broke"
    with pytest.raises(RuntimeError, match=broke):
        screen(TinyLM(), clean, 0, ["wake up neo"], FixedWitness(fail=True), seconds=10)


def test_hardest_ranks_targets_by_the_lowest_loss_any_run_reached() -> None:
    pool = ["a", "b", "c", "d", "e"]
    runs = [{"a": 0.5, "b": 3.0, "c": 0.1}, {"a": 2.0, "b": 1.5, "d": 4.0}]
    # Lowest over runs: a 0.5, b 1.5, c 0.1, d 4.0; e no run scored, so last.
    assert hardest(pool, runs, 5) == ("d", "b", "a", "c", "e")
    assert hardest(pool, runs, 2) == ("d", "b")
    assert hardest(pool, [{"a": 1.0, "b": 1.0}], 3) == ("a", "b", "c")  # ties in pool order
    with pytest.raises(ValueError, match="count must be between 0 and 5"):
        hardest(pool, runs, 6)
