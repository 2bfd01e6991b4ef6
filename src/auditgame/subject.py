"""The subject: all an auditor is given.

The runner builds a subject from the card and the verified weights only; the secret is not
among its inputs, so no attribute, closure or file handle of a subject leads to it. Data are
handed out by access level and nothing above it: a static auditor gets no samples at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from auditgame.access import Access
from auditgame.card import Card
from auditgame.errors import AccessError
from auditgame.families.base import Dataset

if TYPE_CHECKING:
    from auditgame.text.family import TextInterface


@dataclass
class PassCounter:
    """Counts the samples that go forward through, and back through, the model."""

    forward: int = 0
    backward: int = 0

    def attach(self, model: nn.Module) -> None:
        def on_forward(
            _module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object
        ) -> None:
            n = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
            self.forward += n
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda grad: self._count_backward(n, grad))

        model.register_forward_hook(on_forward)

    def _count_backward(self, n: int, grad: torch.Tensor) -> torch.Tensor:
        self.backward += n
        return grad


@dataclass
class Subject:
    """Attributes:
    model: the organism's network in eval mode, rebuilt from verified weights.
    card: the public card.
    access: the level this subject was built for.
    clean: clean labelled samples (validation split), from ``Access.CLEAN_DATA``.
    traffic: unlabelled run-time inputs, at ``Access.DYNAMIC`` only.
    reference: the family's base model, only for auditors that declare ``reference``.
    text: for a language model, what its auditor may use of the family (tokenizer, prefix,
        public targets; ``families.text.TextInterface``): the card's family's when not given;
        None for other models.
    """

    model: nn.Module
    card: Card
    access: Access
    clean: Dataset | None = None
    traffic: torch.Tensor | None = None
    reference: nn.Module | None = None
    text: TextInterface | None = None
    passes: PassCounter = field(default_factory=PassCounter)
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        if self.access < Access.CLEAN_DATA and self.clean is not None:
            raise AccessError("a WEIGHTS subject carries no clean data")
        if self.access < Access.DYNAMIC and self.traffic is not None:
            raise AccessError("only a DYNAMIC subject carries run-time traffic")
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()
        self.passes.attach(self.model)
        if self.text is None:
            from auditgame.text.family import interface_of

            self.text = interface_of(self.card.family)
        if self.reference is not None:
            for p in self.reference.parameters():
                p.requires_grad_(False)
            self.reference.eval()

    def require(self, level: Access) -> None:
        if self.access < level:
            raise AccessError(f"needs {level.name} access, subject has {self.access.name}")

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def clean_data(self) -> Dataset:
        self.require(Access.CLEAN_DATA)
        assert self.clean is not None
        return self.clean

    @property
    def reference_model(self) -> nn.Module:
        if self.reference is None:
            raise AccessError("this subject carries no reference model (declare reference=True)")
        return self.reference

    @property
    def traffic_data(self) -> torch.Tensor:
        self.require(Access.DYNAMIC)
        assert self.traffic is not None
        return self.traffic
