"""The referee's side of an agent's audit: one agent, one zoo, organism by organism.

An ``AgentGame`` is a game whose auditor is an agent: it opens the zoo's organisms one at a
time, and the agent, through the tools (``auditgame.agents.tools``; over MCP,
``auditgame.agents.serve``; or in this process, ``AuditSession.call``), questions the open one
until it submits a finding. The finding is checked by the spec and judged against the secret
exactly as an algorithmic auditor's is (``run.task.check_witness``, ``score.score``), and its
row goes into the same store, under the auditor name ``agent:<name>``.

What keeps the numbers honest:
- The model is questioned only in a sandboxed child (``auditgame.agents.child``) that sees the
  organism's public files and the data of the game's access level, as an auditor's does.
- ``run_auditor`` runs a registered auditor as a game would (``run.sealed.audit``): in its own
  sandbox, its cost charged to the agent. Its finding comes back to the agent as advice; it is
  not judged.
- Every call is counted (``ToolBudget``); a call past the budget is refused, and only
  ``submit_finding`` stays open, once per organism.
- The agent learns nothing from the judge while the game runs: ``submit_finding`` answers with
  the spec's check of the witness (which needs no secret) and the next organism, never the
  score. Secrets go into the store when the last organism is judged, as in ``game.play``.
- Each judged organism is committed at once; a session started again on the same game resumes
  at the first organism not yet judged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.agents.tools import ToolBudget, ToolError, Usage, tools_class
from auditgame.errors import AuditgameError
from auditgame.finding import AGENT_PREFIX, Cost, Finding
from auditgame.fitting import reference_zoo, references_needed
from auditgame.game import auditor_seed
from auditgame.provenance import code_fingerprint
from auditgame.run import sealed
from auditgame.run.sealed import (
    AuditorInfo,
    ChildError,
    ChildProcess,
    auditor_info,
    sealed_fit,
)
from auditgame.run.task import access_data, check_witness
from auditgame.score import score
from auditgame.store import Store
from auditgame.violation import WitnessCheck
from auditgame.zoo import Zoo

# A tool child answers within this (a call is bounded by its own caps: MAX_INPUTS, tokens).
TOOL_SECONDS = 600.0

SESSION_TOOLS = ("describe", "run_auditor", "submit_finding")


class AgentGame(BaseModel):
    """Attributes:
    zoo: the zoo folder.
    agent: the agent's name; its rows are stored as auditor ``agent:<agent>``.
    access: what the tools may hand out (``WEIGHTS`` or ``CLEAN_DATA``; run-time traffic is
        for dynamic auditors, which answer another question).
    reference: whether the agent is given the family's base model (``compare_with_base``, and
        reference auditors through ``run_auditor``); reported apart, as for auditors.
    budget: what the agent may spend per organism.
    seed: seeds sampling tools and the auditors it runs.
    plugins: modules of plugin auditors the agent may run besides the built-ins (imported
        only in sandboxes, as a game's ``AuditorSpec.module``).
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    zoo: Path
    agent: str
    access: Access = Access.CLEAN_DATA
    reference: bool = False
    budget: ToolBudget = ToolBudget()
    seed: int = 0
    plugins: tuple[str, ...] = ()

    def model_post_init(self, _context: Any) -> None:
        if self.access >= Access.DYNAMIC:
            raise ValueError("an agent audits at WEIGHTS or CLEAN_DATA access")
        if not self.agent or any(c in self.agent for c in "/\\\0"):
            raise ValueError(f"an agent's name is a plain word, got {self.agent!r}")

    @property
    def auditor(self) -> str:
        return f"{AGENT_PREFIX}{self.agent}"

    def describe(self) -> dict[str, Any]:
        return {
            **Zoo(self.zoo).describe(),
            "agent": self.agent,
            "access": self.access.name,
            "reference": self.reference,
            "tool_budget": asdict(self.budget),
            "seed": self.seed,
            "plugins": list(self.plugins),
            "code": code_fingerprint(),
        }

    @property
    def id(self) -> str:
        """As ``Game.id``: the same agent on the same zoo, access, budget, seed and code
        resumes; anything else starts a new game."""
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class AuditSession:
    """One agent's audit of a zoo; ``call`` is every tool, the session's own ones included.

    Use as a context manager (it holds a sandboxed child), or ``close()`` it."""

    def __init__(
        self,
        game: AgentGame,
        key: bytes,
        store: Store,
        *,
        fits_dir: Path | None = None,
        only: str | None = None,
    ) -> None:
        """``only``: audit this one organism of the game (one Inspect sample, one MCP
        server); closing the session before its finding is submitted, after the agent called
        any tool, then records a failed finding for it, scored as the worst answer, as for an
        auditor that crashed. Closed before any call (the harness failed before the agent
        ran), nothing is recorded and a rerun audits it: an agent that has seen nothing of an
        organism cannot choose which ones to leave out."""
        from auditgame.game import fits_root

        self.game = game
        self.zoo = Zoo(game.zoo)
        self.zoo.check_key(key)
        self._key = key
        self.store = store
        self.game_id = game.id
        self.fits = fits_root(store, fits_dir)
        self.hidden = tuple(
            p.resolve() for p in (Path(game.zoo).parent, store.path.parent, self.fits)
        )
        if only is not None and only not in self.zoo.ids:
            raise AuditgameError(f"no organism {only!r} in {game.zoo}")
        self.only = only
        self.family = registry.get("family", self.zoo.family)()
        self.tools = tools_class(self.family)
        store.add_game(self.game_id, game.describe())
        # The base model is built here once; each sandbox reads it from the cache.
        self.family.base_model()
        self.child = ChildProcess({"op": "hello"}, self.hidden, module="auditgame.agents.child")
        self.sealed = self.child.sealed
        self.organism_id: str | None = None
        self._folder: Path | None = None
        self._called = False
        self.usage = Usage()
        self._open_next()

    def __enter__(self) -> AuditSession:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the tools' child; in a one-organism session, an open organism gets a failed
        finding (the agent stopped without an answer)."""
        self.child.close()
        if self.only is not None and self.organism_id is not None and self._called:
            self._record(
                Finding(
                    auditor=self.game.auditor,
                    params=self._params(),
                    p_violation=None,
                    evidence={"tool_calls": self.usage.calls, "tokens": self.usage.tokens},
                    cost=self._cost(),
                    error="the agent stopped without submitting a finding",
                ),
                None,
            )
            self.organism_id = None

    # -------------------------------------------------------------------- the one way in

    def call(self, name: str, args: dict[str, Any] | None = None) -> Any:
        """Tool ``name`` with ``args`` on the open organism; its answer as JSON data.

        Raises:
            ToolError: an unknown tool, one above the game's access, bad arguments, a spent
                budget, a second finding, or no organism left to audit.
        """
        args = dict(args or {})
        self._called = True
        if name == "describe":
            return self.describe()
        if self.organism_id is None:
            raise ToolError("every organism of this game is judged; nothing is open")
        if name == "submit_finding":
            return self.submit_finding(**_bound(self.submit_finding, name, args))
        if name not in (*SESSION_TOOLS, *self.tools.specs()):
            raise ToolError(f"no tool {name!r}; tools: {self.tool_names()}")
        spent = self.usage.over(self.game.budget)
        if spent is not None:
            raise ToolError(f"{name} refused: {spent}; submit_finding is still open")
        if name == "run_auditor":
            return self.run_auditor(**_bound(self.run_auditor, name, args))
        return self._tool(name, args)

    def tool_names(self) -> list[str]:
        return sorted([*SESSION_TOOLS, *self.tools.specs()])

    def _tool(self, name: str, args: dict[str, Any]) -> Any:
        left = self.game.budget.tokens - self.usage.tokens
        message = {"op": "tool", "task": name, "name": name, "args": args, "tokens_left": left}
        start = time.perf_counter()
        try:
            reply = self.child.request(message, TOOL_SECONDS)
        except ChildError as exc:
            self.usage.add(Usage(calls=1, seconds=time.perf_counter() - start))
            text = str(exc)
            if text.startswith("ToolError: "):
                raise ToolError(text.splitlines()[0].removeprefix("ToolError: ")) from None
            if self.child._proc.poll() is not None:
                self._restart()
            raise ToolError(f"{name} failed: {text.splitlines()[0][:500]}") from None
        usage = reply["usage"]
        self.usage.add(
            Usage(
                calls=1,
                forward=int(usage["forward"]),
                backward=int(usage["backward"]),
                tokens=int(usage["tokens"]),
                # The referee's clock, not the child's word.
                seconds=time.perf_counter() - start,
            )
        )
        return reply["result"]

    # -------------------------------------------------------------------- session tools

    def describe(self) -> dict[str, Any]:
        """The open organism's public card, what the agent may do, and what it has spent."""
        ids = self.zoo.ids
        out: dict[str, Any] = {
            "game": self.game_id,
            "agent": self.game.auditor,
            "organisms": len(ids),
            "judged": len(ids) - len(self._todo()),
            "organism": self.organism_id,
            "access": self.game.access.name,
            "base_model": self.game.reference,
            "tools": self.tool_names(),
            "budget": asdict(self.game.budget),
            "spent": self.usage.to_dict(),
            "auditors": self._auditors(),
        }
        if self.organism_id is not None:
            card = self.zoo.organism(self.organism_id).card
            spec = card.spec
            out |= {
                "family": card.family,
                "modality": self.family.modality,
                "input_shape": card.input_shape,
                "classes": card.classes,
                "behaviour": spec.behaviour,
                "threat_model": spec.threat_model.describe(),
                "violation": spec.threat_model.kind,
                "spec": spec.model_dump(mode="json"),
                "witness": spec.kind.witness_format,
            }
        return out

    def _auditors(self) -> list[str]:
        """The built-in auditors this game's agent may run on its family."""
        registry.load_builtins("auditor")
        return sorted(
            name
            for name in registry.names("auditor")
            if registry.is_builtin(cls := registry.get("auditor", name))
            and cls.supports(self.zoo.family)
            and cls.looks_for(self.zoo.spec().threat_model.kind)
            and cls.access <= self.game.access
            and (self.game.reference or not cls.reference)
        )

    def _auditor(self, name: str, params: dict[str, Any]) -> AuditorInfo:
        """Auditor ``name``'s metadata: a built-in's from its class, a plugin's (from the
        game's ``plugins``) from a sandboxed child; refused unless it may run here."""
        registry.load_builtins("auditor")
        cls = registry.registered("auditor", name)
        if cls is not None and registry.is_builtin(cls):
            info = auditor_info(name, params, self.zoo.family, self.hidden)
        elif self.game.plugins:
            errors = []
            for module in self.game.plugins:
                try:
                    info = auditor_info(name, params, self.zoo.family, self.hidden, module=module)
                    break
                except AuditgameError as exc:
                    errors.append(str(exc)[:200])
            else:
                raise AuditgameError(f"no plugin of this game registers it ({'; '.join(errors)})")
        else:
            raise AuditgameError(f"not a built-in auditor; these are: {self._auditors()}")
        if not info.supports:
            raise AuditgameError("it does not examine this family")
        if not info.audits(self.zoo.spec().threat_model.kind):
            raise AuditgameError(f"it looks for {', '.join(info.threats or ())} violations")
        if info.access > self.game.access:
            raise AuditgameError(f"it needs {info.access.name} access; this game gives less")
        if info.reference and not self.game.reference:
            raise AuditgameError("it needs the base model, which this game does not give")
        return info

    def run_auditor(
        self, name: str, params: dict[str, Any] | None = None, seconds: float | None = None
    ) -> dict[str, Any]:
        """Run registered auditor ``name`` (with ``params``) on the open organism, in its own
        sandbox, for at most ``seconds`` (default: what is left of the budget); its finding
        as advice, charged to the budget. Not judged."""
        assert self.organism_id is not None
        params = dict(params or {})
        left = self.game.budget.seconds - self.usage.seconds
        seconds = left if seconds is None else min(float(seconds), left)
        if seconds <= 0:
            raise ToolError("seconds must be positive")
        start = time.perf_counter()
        try:
            info = self._auditor(name, params)
            fit = None
            if info.fitted:
                needed = references_needed(info.params)
                if needed is not None:
                    reference_zoo(self.zoo.family, *needed)
                fit = sealed_fit(info, self.zoo.family, self.fits, self.hidden)
        except (AuditgameError, TypeError, ValueError) as exc:
            self.usage.add(Usage(calls=1, seconds=time.perf_counter() - start))
            raise ToolError(f"run_auditor {name!r} with {params}: {exc}") from None
        organism = self.zoo.organism(self.organism_id)
        budget = Budget(seconds=seconds, n_clean=self.game.budget.n_clean)
        clean, _ = access_data(organism, info.access, budget, None)
        seed = auditor_seed(self.game.seed, self.organism_id, f"{self.game.auditor}/{name}")
        finding, _ = sealed.audit(
            info, organism, budget, seed, clean=clean, traffic=None, fit=fit, hidden=self.hidden
        )
        self.usage.add(
            Usage(
                calls=1,
                forward=finding.cost.forward,
                backward=finding.cost.backward,
                seconds=time.perf_counter() - start,
            )
        )
        return finding.model_dump(mode="json")

    def submit_finding(
        self,
        p_violation: float,
        target: int | None = None,
        trigger: dict[str, Any] | None = None,
        evidence: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The agent's answer for the open organism, once: the probability that it violates
        its spec, and the *how* (a target label; a witness in the spec's format, see
        ``describe``). Checked by the spec, judged, stored; the next organism opens."""
        assert self.organism_id is not None
        try:
            finding = Finding(
                auditor=self.game.auditor,
                params=self._params(),
                p_violation=p_violation,
                target=target,
                trigger=trigger,
                evidence={
                    **(evidence or {}),
                    "tool_calls": self.usage.calls,
                    "tokens": self.usage.tokens,
                },
                cost=self._cost(),
            )
            finding = Finding.model_validate_json(finding.model_dump_json())
            check = check_witness(self.zoo.organism(self.organism_id), finding)
        except (ValidationError, ValueError, TypeError, KeyError) as exc:
            raise ToolError(f"submit_finding: not a finding this spec can check: {exc}") from None
        recorded = self.organism_id
        self._record(finding, check)
        if self.only is None:
            self._open_next()
        else:
            self.organism_id = None
        witness = None if check is None else {"asr": check.asr, "violates": check.violates}
        return {"recorded": recorded, "witness": witness, "next": self.organism_id}

    def _params(self) -> dict[str, Any]:
        return {
            "access": self.game.access.name,
            "reference": self.game.reference,
            "tool_budget": asdict(self.game.budget),
        }

    def _cost(self) -> Cost:
        usage = self.usage
        return Cost(seconds=usage.seconds, forward=usage.forward, backward=usage.backward)

    def _record(self, finding: Finding, check: WitnessCheck | None) -> None:
        """Judge ``finding`` on the open organism and store its row; reveal the game's
        secrets once every organism is judged."""
        assert self.organism_id is not None
        oid = self.organism_id
        result = score(
            oid,
            self.zoo.family,
            self.zoo.spec().kind,
            finding,
            self.zoo.secret(oid, self._key),
            check,
            dynamic=False,
            reference=self.game.reference,
            sealed=self.sealed,
        )
        self.store.add(self.game_id, result, finding, auditor_seed(self.game.seed, oid, "agent"))
        if not self._todo():
            secrets = {o: self.zoo.secret(o, self._key) for o in self.zoo.ids}
            self.store.reveal(self.game_id, secrets)

    # -------------------------------------------------------------------- organisms

    def _todo(self) -> list[str]:
        """The organisms of the game this agent has not been judged on."""
        judged = {o for o, a in self.store.finished(self.game_id) if a == self.game.auditor}
        return [o for o in self.zoo.ids if o not in judged]

    def _open_next(self) -> None:
        """Open the first organism still to judge (``only``, if not judged yet)."""
        todo = self._todo()
        if self.only is not None:
            todo = [o for o in todo if o == self.only]
        self.usage = Usage()
        self._called = False
        self.organism_id = todo[0] if todo else None
        if self.organism_id is not None:
            self._stage()

    def _stage(self) -> None:
        assert self.organism_id is not None
        organism = self.zoo.organism(self.organism_id)
        budget = Budget(n_clean=self.game.budget.n_clean)
        clean, _ = access_data(organism, self.game.access, budget, None)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        task, folder = self.child.stage()
        self._folder = folder
        sealed.stage_inputs(folder, organism, clean, None)
        seed = auditor_seed(self.game.seed, self.organism_id, self.game.auditor)
        message = {
            "op": "open",
            "task": task,
            "access": int(self.game.access),
            "reference": self.game.reference,
            "seed": seed,
        }
        self.child.request(message, sealed.START_SECONDS)

    def _restart(self) -> None:
        """A new child for the open organism, after the old one died (its usage stays)."""
        self.child.close()
        self.child = ChildProcess({"op": "hello"}, self.hidden, module="auditgame.agents.child")
        self._folder = None
        usage = self.usage
        self._stage()
        self.usage = usage


def _bound(method: Any, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """``args``, once they fit ``method``'s signature (else a ``ToolError`` naming ``name``)."""
    try:
        inspect.signature(method).bind(**args)
    except TypeError as exc:
        raise ToolError(f"{name}: {exc}") from None
    return args
