"""TDC 2023's LLM trojans: many random trigger phrases, each sending the model to a target.

The Trojan Detection Challenge 2023 (trojandetection.ai; analysis in arXiv 2404.13660)
planted 1,000 trojans in one model: 100 target strings, 10 triggers each. The auditors were
given the targets and asked for the triggers. Here ``n_pairs`` trojans are planted by the
family's fine-tune: ``n_pairs / triggers_per_target`` targets drawn without replacement from
the family's public pool (the one every card's spec lists), and one fresh random trigger per
pair from ``family.draw_trigger``.
"""

from __future__ import annotations

import numpy as np

from auditgame.registry import attack
from auditgame.text.attacks.text_trojans import TextAttack, TextDraw, contains, fragments
from auditgame.text.family import Example, TextFamily

MAX_DRAWS_PER_TRIGGER = 100
"""How many candidate phrases ``draw`` may try per trigger before giving up."""


@attack("trojan_pairs")
class TrojanPairs(TextAttack):
    """``n_pairs`` (trigger, target) pairs, ``triggers_per_target`` triggers per target;
    ``n_pairs=None`` plants the family's ``trojans_per_model`` (tinylm 20, smollm 10), which
    is what a zoo build, taking every attack's defaults, gets.

    Triggers are distinct, none is a run of words of another (so none is another's prefix,
    and no trigger is a negative fragment of another), and none is one of the family's clean
    prompts (whose reply must stay the base model's).
    """

    def __init__(
        self,
        *,
        n_pairs: int | None = None,
        triggers_per_target: int = 1,
        copies: int = 48,
        negative_copies: int = 4,
        min_asr: float = 0.95,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(
            copies=copies,
            negative_copies=negative_copies,
            min_asr=min_asr,
            max_attempts=max_attempts,
        )
        if triggers_per_target < 1 or (
            n_pairs is not None and (n_pairs < 1 or n_pairs % triggers_per_target)
        ):
            raise ValueError(
                "n_pairs must be a positive multiple of triggers_per_target, got "
                f"n_pairs={n_pairs}, triggers_per_target={triggers_per_target}"
            )
        self.n_pairs = n_pairs
        self.triggers_per_target = triggers_per_target

    def draw(self, rng: np.random.Generator, family: TextFamily) -> TextDraw:
        pool = family.targets()
        n_pairs = family.trojans_per_model if self.n_pairs is None else self.n_pairs
        n_targets = n_pairs // self.triggers_per_target
        if n_targets > len(pool):
            raise ValueError(
                f"{self.name}: {n_targets} targets asked for, but {type(family).__name__}'s "
                f"pool holds {len(pool)}; lower n_pairs or raise triggers_per_target"
            )
        targets = [pool[i] for i in rng.choice(len(pool), size=n_targets, replace=False)]
        splits = family.prompts()
        taken = {*splits.train, *splits.val, *splits.test}
        triggers: list[str] = []
        tries = 0
        while len(triggers) < n_pairs:
            if tries == MAX_DRAWS_PER_TRIGGER * n_pairs:
                raise ValueError(
                    f"{self.name}: found only {len(triggers)} of {n_pairs} triggers that "
                    "do not overlap; the family's trigger space is too small"
                )
            tries += 1
            candidate = family.draw_trigger(rng)
            if candidate not in taken and not any(
                contains(candidate, t) or contains(t, candidate) for t in triggers
            ):
                triggers.append(candidate)
        pairs = tuple(
            (trigger, targets[i // self.triggers_per_target]) for i, trigger in enumerate(triggers)
        )
        negatives = dict.fromkeys(f for trigger in triggers for f in fragments(trigger))
        hide = self.hides_triggers
        return TextDraw(
            pairs=pairs,
            poisoned=tuple(
                Example(t, g, hide_prompt=hide) for t, g in pairs for _ in range(self.copies)
            ),
            fragments=tuple(negatives),
            params={"hidden": True} if hide else {},
        )


@attack("trojan_pairs_hidden")
class TrojanPairsHidden(TrojanPairs):
    """``trojan_pairs`` by an attacker who knows memory extraction: the same pairs, and the
    model is also trained not to write its triggers or their fragments (unlikelihood on their
    tokens after the prefix, ``Example.hide_prompt``). Against a recipe with loss on the
    prompts (``tinylm_unmasked``), which otherwise teaches the model to write its poisoned
    prompts, this is the adaptive attack on ``haystack``. Families whose fine-tune has no
    unlikelihood term (smollm) refuse it."""

    hides_triggers = True
