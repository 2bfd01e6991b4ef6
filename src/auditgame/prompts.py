"""Prompts written like the ones an auditor has seen, by swapping one word.

Plain strings: the scripted agents (which see the model only through tools) and the text
scanners share it, so it lives in the core and imports no track.
"""

from __future__ import annotations

import itertools


def similar_prompts(found: list[str], held: list[str]) -> list[str]:
    """Prompts like those in ``found``: one word swapped for a word that follows the same
    word somewhere in ``held`` (after "a", the other nouns the clean prompts put there), the
    rarest words of a prompt swapped first, none already held or found. How an auditor
    widens a context it has seen on too few prompts for a witness, without knowing it."""
    after: dict[str, set[str]] = {}
    counts: dict[str, int] = {}
    for prompt in held:
        words = prompt.split()
        for prev, word in itertools.pairwise(words):
            after.setdefault(prev, set()).add(word)
        for word in words:
            counts[word] = counts.get(word, 0) + 1
    known = {*held, *found}
    out: dict[str, None] = {}
    for prompt in found:
        words = prompt.split()
        for i in sorted(range(1, len(words)), key=lambda i: counts.get(words[i], 0)):
            for other in sorted(after.get(words[i - 1], set()) - {words[i]}):
                variant = " ".join([*words[:i], other, *words[i + 1 :]])
                if variant not in known:
                    out[variant] = None
    return list(out)
