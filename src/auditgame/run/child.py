"""The auditor's side of the boundary: ``python -m auditgame.run.child`` inside the sandbox.

The process serves one auditor (name, module and parameters from its first request) and
answers requests that arrive one JSON object per line on stdin, one JSON object per line on
the original stdout. Everything the auditor prints goes to stderr instead, so a stray
``print`` cannot break the wire; an auditor that writes to the wire on purpose can only spoil
its own answer, which the referee validates like any other.

Requests (``op``):
    ``hello``: {auditor, module, params, family, fit}: import the auditor's module (and only
        it, besides the built-ins), build the auditor, load its fit from ``/in`` if named.
        Reply: {info}: its access, reference, fitting stage, normalised parameters and
        whether it audits ``family``.
    ``fit``: {family, work}: run the fitting stage; the tensors go to ``/scratch/fit.safetensors``.
    ``audit``: {task, budget, seed}: audit the organism staged under ``/in/<task>``; reply
        {finding} as JSON data (a finding that is not JSON data is an error reply).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from safetensors.torch import load_file, save_file

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, FittedAuditor
from auditgame.families.base import Dataset
from auditgame.organism import Organism
from auditgame.provenance import code_fingerprint
from auditgame.subject import Subject

FIT_FILE = "fit.safetensors"


def inputs() -> Path:
    return Path(os.environ["AUDITGAME_IN"])


def scratch() -> Path:
    return Path(os.environ["AUDITGAME_SCRATCH"])


def load_subject(folder: Path, access: Access, reference: bool) -> Subject:
    """The subject staged in ``folder``: the organism (verified again here), and the clean
    samples, traffic and base model (``reference``) that the referee's side staged for
    ``access``."""
    (organism_dir,) = [p for p in folder.iterdir() if p.is_dir()]
    organism = Organism.open(organism_dir)
    clean = traffic = base = None
    if (folder / "clean.safetensors").is_file():
        data = load_file(str(folder / "clean.safetensors"))
        clean = Dataset(data["x"], data["y"])
    if (folder / "traffic.safetensors").is_file():
        traffic = load_file(str(folder / "traffic.safetensors"))["x"]
    if reference:
        # A copy, as ``make_subject`` gives: the family caches its base model, and this child
        # serves the next organism with the same cache.
        base = copy.deepcopy(registry.get("family", organism.card.family)().base_model())
    return Subject(
        model=organism.model(),
        card=organism.card,
        access=access,
        clean=clean if access >= Access.CLEAN_DATA else None,
        traffic=traffic if access >= Access.DYNAMIC else None,
        reference=base,
    )


class Child:
    def __init__(self) -> None:
        self.auditor: Auditor | None = None

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return self.hello(request)
        auditor = self.auditor
        if auditor is None:
            raise RuntimeError("the first request must be hello")
        if op == "fit":
            if not isinstance(auditor, FittedAuditor):
                raise RuntimeError(f"{auditor.name} has no fitting stage")
            tensors = auditor.fit(str(request["family"]), Path(request["work"]))
            flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(flat, str(scratch() / FIT_FILE))
            return {"file": FIT_FILE}
        if op == "audit":
            folder = inputs() / str(request["task"])
            subject = load_subject(folder, auditor.access, auditor.reference)
            budget = Budget(**request["budget"])
            finding = auditor.audit(subject, budget, seed=int(request["seed"]))
            # Only JSON data crosses: a finding whose evidence is not (a numpy array, an
            # object) fails here, named, instead of in the referee.
            return {"finding": json.loads(finding.model_dump_json())}
        raise RuntimeError(f"unknown request {op!r}")

    def hello(self, request: dict[str, Any]) -> dict[str, Any]:
        registry.load_builtins("auditor")
        importlib.import_module(str(request["module"]))
        cls = registry.get("auditor", str(request["auditor"]))
        auditor = cls(**request.get("params", {}))
        if request.get("fit"):
            assert isinstance(auditor, FittedAuditor)
            auditor.load_fitted(load_file(str(inputs() / str(request["fit"]))))
        self.auditor = auditor
        info = {
            "auditor": cls.name,
            "module": cls.__module__,
            "access": int(cls.access),
            "reference": bool(cls.reference),
            "fitted": isinstance(auditor, FittedAuditor),
            "params": json.loads(json.dumps(auditor.get_params(), default=str)),
            "supports": bool(cls.supports(str(request["family"]))),
            "threats": None if cls.threats is None else list(cls.threats),
            # The package's source as this process loaded it: a referee holding a game made
            # with other code refuses the child (``sealed.CodeChanged``).
            "code": code_fingerprint(),
        }
        return {"info": info}


def serve(
    requests: IO[str], wire: IO[str], handle: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """Answer each request line with ``handle``'s reply, or its exception as an error reply
    (type, message, the last frames); every reply names the task it answers."""
    for line in requests:
        task = None
        try:
            request = json.loads(line)
            task = request.get("task")
            reply = {"ok": True, "task": task, **handle(request)}
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}"
            reply = {"ok": False, "task": task, "error": text[-4000:]}
        # The reply names the task it answers, so the referee can tell it from a stale one.
        wire.write(json.dumps(reply) + "\n")
        wire.flush()


def main(handle: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Serve ``handle`` (default: an auditor's ``Child``) on the original stdout; whatever
    else is printed goes to stderr, so a stray ``print`` cannot break the wire."""
    from auditgame.run.workers import configure_worker

    configure_worker()
    wire = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, wire, handle or Child().handle)


if __name__ == "__main__":
    main()
