"""Additive perturbations ``x -> x + delta`` of vector inputs (random Fourier and random ReLU
features), the shape of the Goldwasser et al. undetectable backdoor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from auditgame import metrics
from auditgame.vector.perturbation import AdditiveTrigger
from auditgame.violation import ThreatModel, ViolationKind, WitnessCheck, violation_kind

if TYPE_CHECKING:
    import torch


class AdditiveThreat(ThreatModel):
    """The triggers a spec forbids: ``x -> x + delta`` with ``||delta||_2 <= max_norm``.

    For vector families (random Fourier and random ReLU features). A witness is an
    ``AdditiveTrigger.to_dict()``. With a ``target`` it is measured as an all-to-one attack
    (``metrics.attack_success_rate``); with ``target=None`` as an untargeted one
    (``metrics.flip_rate``): the fraction of held-out inputs whose predicted label it changes,
    which is what the Goldwasser et al. RFF backdoor does to a binary classifier.

    ``max_norm`` is absolute (input units); families set it as a multiple of a typical
    input's norm and say so on the card.
    """

    kind: Literal["additive_l2"] = "additive_l2"
    max_norm: float = Field(gt=0, allow_inf_nan=False)
    untargeted: ClassVar[bool] = True

    def contains(self, trigger: AdditiveTrigger) -> bool:
        return trigger.norm <= self.max_norm * (1 + 1e-6)

    def describe(self) -> str:
        return f"any x + delta with ||delta||_2 <= {self.max_norm:g}"

    def check(
        self,
        model: torch.nn.Module,
        witness: dict[str, Any],
        target: int | None,
        x: torch.Tensor,
        y: torch.Tensor,
        tau: float,
    ) -> WitnessCheck:
        """Flip rate (``target=None``) or ASR of an additive witness on held-out ``(x, y)``."""
        trigger = AdditiveTrigger.from_dict(witness)
        if target is None:
            rate = metrics.flip_rate(model, trigger.apply, x)
        else:
            rate = metrics.attack_success_rate(model, trigger.apply, x, y, target)
        inside = self.contains(trigger)
        return WitnessCheck(asr=rate, in_threat_model=inside, violates=inside and rate >= tau)


@violation_kind("additive_l2")
class AdditiveKind(ViolationKind):
    """Backdoors of vector classifiers reached by a small shift of the input."""

    threat = AdditiveThreat
    default_auditors = ("flip_search", "weight_battery")
    modalities = ("vector", "image")

    def describe_trigger(self, raw: dict[str, Any]) -> str | None:
        if raw.get("kind") != "additive":
            return None
        return f"additive shift, ||delta||_2 = {AdditiveTrigger.from_dict(raw).norm:.2f}"
