"""Planted input transformations of every track, and how a stored one is read back.

A secret stores its trigger as a dict; each trigger shape (an image mask-and-pattern, a
warping field, an additive perturbation, a max-of-K token pattern, a text phrase ...) lives in
its track and registers here with ``@trigger_kind(name)``, so ``load`` rebuilds any of them
without this module knowing one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

UNMARKED = "mask_pattern"
"""The kind of a stored trigger without a ``"kind"`` key: the image mask-and-pattern, the
original format, kept readable (``auditgame.image.trigger.Trigger``)."""


class InputTrigger(Protocol):
    """Any planted input transformation: a mask-and-pattern ``Trigger``, a warping field, ...

    A secret stores ``to_dict()``, which carries a ``"kind"`` key for every kind but the
    mask-and-pattern one (the original format, kept readable); ``load`` turns it back.
    """

    def apply(self, x: torch.Tensor) -> torch.Tensor: ...

    def to_dict(self) -> dict[str, Any]: ...


_KINDS: dict[str, Callable[[dict[str, Any]], InputTrigger]] = {}


def trigger_kind(name: str) -> Callable[[type], type]:
    """Class decorator: ``load`` rebuilds dicts with ``"kind": name`` by ``cls.from_dict``."""

    def register(cls: type) -> type:
        _KINDS[name] = cls.from_dict  # type: ignore[attr-defined]
        return cls

    return register


def load(data: dict[str, Any]) -> InputTrigger:
    """Rebuild a stored trigger of any registered kind (an image mask-and-pattern when unmarked)."""
    kind = data.get("kind", UNMARKED)
    if kind not in _KINDS:
        # Kinds register on import of the module that defines them: the built-ins first, and
        # plugins only when no built-in knows the kind.
        from auditgame import registry

        registry.load_builtins()
        if kind not in _KINDS:
            registry.load_plugins()
    if kind not in _KINDS:
        raise ValueError(f"unknown trigger kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[kind](data)
