"""Image triggers ``x -> (1 - m) x + m p``: patches, blends, and what Neural Cleanse
reconstructs (``auditgame.image.trigger``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from auditgame import metrics
from auditgame.image.trigger import Trigger
from auditgame.violation import (
    Metric,
    Picture,
    ThreatModel,
    ViolationKind,
    WitnessCheck,
    violation_kind,
)

if TYPE_CHECKING:
    import torch


class MaskPatternThreat(ThreatModel):
    """The triggers a spec forbids: ``x -> (1 - m) x + m p`` with ``||m||_1 <= max_mask_l1``.

    A ``k x k`` patch has L1 norm ``k^2``; a full-image blend at opacity ``alpha`` has
    ``alpha * H * W``. One bound covers both, which is what lets one spec judge a patch
    witness and a blend witness alike.
    """

    kind: Literal["mask_pattern"] = "mask_pattern"
    max_mask_l1: float = Field(gt=0, allow_inf_nan=False)

    def contains(self, trigger: Trigger) -> bool:
        return trigger.l1 <= self.max_mask_l1 + 1e-6

    def describe(self) -> str:
        return f"any (1-m)*x + m*p with ||m||_1 <= {self.max_mask_l1:g} pixels"

    def check(
        self,
        model: torch.nn.Module,
        witness: dict[str, Any],
        target: int | None,
        x: torch.Tensor,
        y: torch.Tensor,
        tau: float,
    ) -> WitnessCheck:
        """Measure a ``Trigger.to_dict()`` witness on held-out ``(x, y)``."""
        assert target is not None, "Spec.check_witness asks for a target"
        trigger = Trigger.from_dict(witness)
        asr = metrics.attack_success_rate(model, trigger.apply, x, y, target)
        inside = self.contains(trigger)
        return WitnessCheck(asr=asr, in_threat_model=inside, violates=inside and asr >= tau)


@violation_kind("mask_pattern")
class MaskPatternKind(ViolationKind):
    """Image backdoors. Recovery: the IoU of the reconstructed and the planted mask."""

    threat = MaskPatternThreat
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("mask_iou", "mask IoU", "metrics.mask_iou of the found and the planted mask"),
    )
    default_auditors = ("neural_cleanse", "weight_stats", "mahalanobis")
    modalities = ("image",)

    def picture(self, raw: dict[str, Any]) -> Picture | None:
        """The mask and the stamp it writes (mask times pattern); its size is the mask's L1."""
        if "kind" in raw or "mask" not in raw:
            return None
        trigger = Trigger.from_dict(raw)
        stamp = trigger.mask[None] * trigger.pattern
        return Picture((("mask", trigger.mask), ("mask·pattern", stamp)), trigger.l1)

    def recovery(
        self,
        planted: dict[str, Any] | None,
        found: dict[str, Any] | None,
        check: WitnessCheck | None,
    ) -> dict[str, float]:
        if planted is None or found is None or "mask" not in planted or "mask" not in found:
            return {}
        iou = metrics.mask_iou(
            np.asarray(planted["mask"], np.float32), np.asarray(found["mask"], np.float32)
        )
        return {"mask_iou": iou}
