"""What a model family provides: data, an architecture, and one training recipe.

Clean and backdoored organisms of a family are trained by the same ``train`` call with
different seeds; an attack only changes the data it is given. That is what keeps a detector
from winning on training artefacts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from auditgame.spec import Spec


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float, in [0, 1]) and integer labels ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def take(self, n: int) -> Dataset:
        return Dataset(self.x[:n], self.y[:n])


@dataclass(frozen=True)
class Splits:
    """A fixed split: ``train`` for training, ``val`` for auditors' clean samples,
    ``test`` for measuring accuracy and attack success (never shown to an auditor)."""

    train: Dataset
    val: Dataset
    test: Dataset

    @classmethod
    def shuffled(cls, x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> Splits:
        """60/20/20 train/validation/test in the order of ``rng.permutation``; every family
        draws its fixed split this way, from a seed of its own."""
        order = torch.as_tensor(rng.permutation(len(y)))
        n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
        parts = torch.split(order, [n_train, n_val, len(y) - n_train - n_val])
        return cls(*(Dataset(x[idx], y[idx]) for idx in parts))


class Family(ABC):
    """A model family. Subclasses register with ``@family("name")``.

    ``modality`` says what kind of input the family's models take ("image" here; other
    families declare their own), and auditors declare the modalities they can examine.
    What an auditor may use of the family beyond the card and the samples its access allows
    is declared here and carried by its subject: ``interface`` (a language model's tokenizer,
    prefix and public targets), ``feature_layer`` (the module whose output is a model's inner
    representation) and ``base_model`` (for auditors with reference access); the methods in
    ``sealed_data`` hand out the family's own samples and are the referee's alone.
    ``min_clean_accuracy`` is the test accuracy a clean organism must reach to be kept.
    ``attacks`` names the attacks a zoo of the family uses unless told otherwise: image
    attacks cannot plant in a vector family, nor the reverse. ``violation`` names the
    violation kind of the family's own spec (``auditgame.violation``); ``default_auditors``
    are who audits its zoos when a game names no one (None: the violation kind's).
    ``agent_tools`` names ("module:Class") the tools an auditing agent gets for its models
    (``auditgame.agents.tools``): a classifier's by default, a track's own where it has them.
    """

    name: ClassVar[str]
    modality: ClassVar[str] = "image"
    agent_tools: ClassVar[str] = "auditgame.agents.image_tools:ImageTools"
    attacks: ClassVar[tuple[str, ...]] = ("badnets", "blend")
    violation: ClassVar[str] = "mask_pattern"
    default_auditors: ClassVar[tuple[str, ...] | None] = None
    min_clean_accuracy: ClassVar[float] = 0.0
    input_shape: ClassVar[tuple[int, ...]]
    classes: ClassVar[tuple[str, ...]]
    sealed_data: ClassVar[tuple[str, ...]] = ("data",)

    @abstractmethod
    def data(self) -> Splits: ...

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """``{"name": ..., **kwargs}`` written to the card."""

    @abstractmethod
    def make_model(self, architecture: dict[str, Any]) -> nn.Module: ...

    @abstractmethod
    def train(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> nn.Module:
        """The family's one recipe; returns a model in eval mode."""

    @abstractmethod
    def spec(self) -> Spec: ...

    @abstractmethod
    def training_data(self) -> str: ...

    def interface(self) -> object | None:
        """What an auditor of this family's models may use of the family itself, carried as
        ``Subject.interface`` (a text family's ``TextInterface``); None: nothing."""
        return None

    def feature_layer(self, model: nn.Module) -> nn.Module | None:
        """The module of ``model`` whose output is its inner representation (a classifier's
        penultimate features), carried as ``Subject.features`` for the auditors that read or
        stimulate activations; None when the family declares none."""
        return None

    def base_model(self) -> nn.Module | None:
        """The pretrained model every organism is fine-tuned from, handed to auditors that
        declare ``reference`` access; None for a family trained from scratch."""
        return None

    def quality(self, model: nn.Module, data: Dataset) -> float:
        """The held-out measure ``min_clean_accuracy`` floors: top-1 accuracy here; a family
        without labels (text) measures how much clean behaviour a model kept."""
        return accuracy(model, data)


def family_named(name: str) -> Family | None:
    """The registered family a card names, or None for a model outside any zoo (a user's own,
    whose card names no registered family)."""
    from auditgame import registry
    from auditgame.errors import RegistryError

    try:
        return registry.get("family", name)()
    except RegistryError:
        return None


def accuracy(model: nn.Module, data: Dataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy of ``model`` on ``data``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            logits = model(data.x[start : start + batch_size])
            correct += int((logits.argmax(1) == data.y[start : start + batch_size]).sum())
    return correct / len(data)
