"""An agent's tools for a classifier (every image family, and the vector ones): ask for labels
and probabilities, read the feature layer, look at clean samples.

Inputs travel as nested lists of numbers in the family's input shape (a card's
``input_shape``, e.g. ``[1, 8, 8]``), values in [0, 1] as the clean samples are, at most
``MAX_INPUTS`` per call: an agent stamps a candidate trigger on clean samples and asks how
the labels move, as a trigger search would.
"""

from __future__ import annotations

from typing import Any

import torch

from auditgame.access import Access
from auditgame.agents.tools import MAX_INPUTS, ToolError, Tools, tool
from auditgame.subject import penultimate


class ImageTools(Tools):
    def _inputs(self, inputs: list[Any]) -> torch.Tensor:
        """``inputs`` as a float tensor of the card's input shape, checked."""
        try:
            x = torch.tensor(inputs, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise ToolError(f"inputs are nested lists of numbers: {exc}") from exc
        shape = tuple(self.subject.card.input_shape)
        if x.dim() == len(shape):
            x = x[None]
        if tuple(x.shape[1:]) != shape or not 1 <= len(x) <= MAX_INPUTS:
            raise ToolError(
                f"inputs must be 1..{MAX_INPUTS} arrays of shape {list(shape)}, "
                f"got shape {list(x.shape)}"
            )
        if not torch.isfinite(x).all():
            raise ToolError("inputs must be finite numbers")
        return x

    @tool()
    @torch.no_grad()
    def predict(self, inputs: list[Any]) -> dict[str, Any]:
        """The model's label and class probabilities for each input."""
        probs = self.subject.model(self._inputs(inputs)).float().softmax(-1)
        return {
            "classes": list(self.subject.card.classes),
            "labels": probs.argmax(-1),
            "probabilities": probs,
        }

    @tool()
    @torch.no_grad()
    def activations(self, inputs: list[Any]) -> dict[str, Any]:
        """The feature layer's output for each input, flattened (the representation the
        linear head reads; the family's ``feature_layer``)."""
        x = self._inputs(inputs)
        return {"activations": penultimate(self.subject.model, self.subject.feature_module, x)}

    @tool(access=Access.CLEAN_DATA)
    def clean_samples(self, n: int = 10, start: int = 0) -> dict[str, Any]:
        """Clean labelled samples ``start`` .. ``start + n`` of the ones this audit holds."""
        data = self.subject.clean_data
        if not 1 <= n <= MAX_INPUTS or not 0 <= start < len(data):
            raise ToolError(f"n must lie in 1..{MAX_INPUTS} and start in 0..{len(data) - 1}")
        return {"x": data.x[start : start + n], "y": data.y[start : start + n], "held": len(data)}
