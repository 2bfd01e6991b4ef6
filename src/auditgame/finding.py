"""An auditor's whole answer, as data (never printed text)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from auditgame.trigger import InputTrigger, load


class Cost(BaseModel):
    seconds: float
    forward: int
    backward: int


class Finding(BaseModel):
    """Attributes:
    auditor: registered name; params: its constructor arguments.
    p_violation: the auditor's probability that the model violates its spec.
    target: the label it believes a trigger sends inputs to, if any.
    trigger: the witness, if any, as its kind's ``to_dict()`` (``trigger.load`` reads it).
    certificate: a proof object, for auditors that prove.
    evidence: whatever supports the verdict (scores per label, norms, statistics).
    cost: seconds and samples passed forward and backward.
    error: set when the auditor failed; then ``p_violation`` is 0.5, uninformative.
    """

    model_config = ConfigDict(frozen=True)

    auditor: str
    params: dict[str, Any] = {}
    p_violation: float = Field(ge=0, le=1)
    target: int | None = None
    trigger: dict[str, Any] | None = None
    certificate: dict[str, Any] | None = None
    evidence: dict[str, Any] = {}
    cost: Cost
    error: str | None = None

    def trigger_object(self) -> InputTrigger | None:
        """The witness as a trigger of its own kind (``trigger.load``), if any."""
        return load(self.trigger) if self.trigger is not None else None
