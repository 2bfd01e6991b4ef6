"""The subject: all an auditor is given.

The runner builds a subject from the card and the verified weights only; the secret is not
among its inputs, so no attribute, closure or file handle of a subject leads to it. Data are
handed out by access level and nothing above it: a static auditor gets no samples at all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from auditgame.access import Access
from auditgame.card import Card
from auditgame.errors import AccessError
from auditgame.families.base import Dataset, family_named


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
    interface: what the auditor may use of the family itself (``Family.interface``: for a
        language model its tokenizer, prefix and public targets, ``text.family.TextInterface``);
        the card's family's when not given.
    features: the module of ``model`` whose output is its inner representation
        (``Family.feature_layer``; a user's model declares it in its spec file), for auditors
        that read or stimulate activations; the card's family's when not given.
    """

    model: nn.Module
    card: Card
    access: Access
    clean: Dataset | None = None
    traffic: torch.Tensor | None = None
    reference: nn.Module | None = None
    interface: object | None = None
    features: nn.Module | None = None
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
        family = family_named(self.card.family)
        if family is not None:
            if self.interface is None:
                self.interface = family.interface()
            if self.features is None:
                self.features = family.feature_layer(self.model)
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
    def feature_module(self) -> nn.Module:
        """``features``, or a clear error for a model that declares none."""
        if self.features is None:
            raise ValueError(
                f"this auditor reads the model's inner representation, and {self.card.family} "
                "declares no feature layer (a user's model: feature_layer in its spec file)"
            )
        return self.features

    @property
    def traffic_data(self) -> torch.Tensor:
        self.require(Access.DYNAMIC)
        assert self.traffic is not None
        return self.traffic


def penultimate(model: nn.Module, layer: nn.Module | None, x: torch.Tensor) -> np.ndarray:
    """What ``layer`` (the model's declared feature layer, ``Subject.features``) outputs while
    ``model`` runs on ``x``, one flattened row per input."""
    if layer is None:
        raise ValueError("needs the model's inner representation, and it declares no features")
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the declared feature layer did not run in the model's forward pass")
    return np.asarray(captured[-1].flatten(1), dtype=np.float64)
