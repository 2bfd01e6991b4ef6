"""An auditor's whole answer, as data (never printed text)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from auditgame.trigger import InputTrigger, load

# An auditing agent's findings are stored under ``agent:<name>`` (``agents.session``), with
# what it spent in their evidence (``tool_calls``, ``tokens``).
AGENT_PREFIX = "agent:"


class Cost(BaseModel):
    seconds: float
    forward: int
    backward: int


class Finding(BaseModel):
    """Attributes:
    auditor: registered name; params: its constructor arguments.
    p_violation: the auditor's probability that the model violates its spec; None exactly
        when the auditor failed (``error``): a failure is never a verdict.
    target: the label it believes a trigger sends inputs to, if any.
    trigger: the witness, if any, as its kind's ``to_dict()`` (``trigger.load`` reads it).
    certificate: a proof object, for auditors that prove.
    evidence: whatever supports the verdict (scores per label, norms, statistics).
    cost: seconds and samples passed forward and backward.
    error: set when the auditor failed; then there is no ``p_violation``, and the judge
        scores the finding as the worst answer (``score.score``).
    """

    model_config = ConfigDict(frozen=True)

    auditor: str
    params: dict[str, Any] = {}
    p_violation: float | None = Field(ge=0, le=1)
    target: int | None = None
    trigger: dict[str, Any] | None = None
    certificate: dict[str, Any] | None = None
    evidence: dict[str, Any] = {}
    cost: Cost
    error: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _a_failure_has_no_probability(cls, data: Any) -> Any:
        """A failed finding's probability is dropped (findings stored before this rule carry
        0.5 beside their error); one that did not fail must give one."""
        if isinstance(data, dict) and data.get("error") is not None:
            return {**data, "p_violation": None}
        if isinstance(data, dict) and data.get("p_violation") is None:
            raise ValueError("p_violation: a finding without an error gives a probability")
        return data

    def trigger_object(self) -> InputTrigger | None:
        """The witness as a trigger of its own kind (``trigger.load``), if any."""
        return load(self.trigger) if self.trigger is not None else None
