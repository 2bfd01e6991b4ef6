"""The referee's side of the boundary: start an auditor's sandbox, stage its inputs, read its
answer as data.

Every call into auditor code — its metadata (for plugins), its fitting stage, each audit —
goes to a child process (``auditgame.run.child``) in a sandbox (``auditgame.run.sandbox``). A
child serves one auditor with one set of parameters and lives for many tasks, so the cost of
starting Python and torch is paid once per worker and auditor, not per audit. What comes back
is one line of JSON, size-capped, parsed without NaN or infinities and validated against the
``Finding`` schema; a reply that breaks any of that, a crash, or a run past the hard limit
becomes an error finding for that one (organism, auditor) pair, and the game goes on.

Built-in auditors' metadata (access, fitting stage, families) is read from their classes,
which ship in this package; a plugin's is asked of a sandboxed child, so no plugin code runs
in the process that holds the key.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import FittedAuditor
from auditgame.errors import AuditgameError, ZooError
from auditgame.families.base import Dataset
from auditgame.finding import Cost, Finding
from auditgame.fitting import fit_key
from auditgame.organism import CARD, WEIGHTS, Organism, check_safetensors_header, sha256_file
from auditgame.provenance import code_fingerprint
from auditgame.run import sandbox

# The largest reply a child may send (a finding with its evidence and trigger).
MAX_REPLY_BYTES = 16 * 1024 * 1024
# Starting a child imports torch and every built-in (about 5 s here) and may load a base model.
START_SECONDS = 600.0
# An audit is stopped at twice its budget plus this: auditors check their budget themselves,
# and a few known ones overrun it (docs/auditors.md); past this it is a hang.
HARD_LIMIT_SECONDS = 60.0
# Children kept alive per worker process; tasks arrive grouped by auditor.
KEEP_CHILDREN = 2


class ChildError(AuditgameError):
    """A child crashed, timed out, or sent a reply that is not valid data."""


class CodeChanged(AuditgameError):
    """The package's source changed while a game ran: a worker or an auditor's child loaded
    other code than the game's id was made from. A game's rows all come from one version of
    the code (``provenance``), so the game stops here; run it again to start a new game."""

    def __init__(self, game_code: str, loaded: str, where: str) -> None:
        self.game_code, self.loaded, self.where = game_code, loaded, where
        super().__init__(
            f"the package's code changed while the game ran: the game was made with code "
            f"{game_code}, {where} loaded {loaded}; run it again to start a new game"
        )

    def __reduce__(self) -> tuple[type[CodeChanged], tuple[str, str, str]]:
        return type(self), (self.game_code, self.loaded, self.where)


@dataclass(frozen=True)
class AuditorInfo:
    """What the referee needs to know of an auditor, without running its code.

    Attributes:
        name, module: the registered name and the module that registers it.
        params: its constructor arguments, normalised (defaults filled in).
        access, reference: what its subject carries.
        fitted: whether it has a fitting stage.
        supports: whether it audits the game's family.
        threats: the threat-model kinds it looks for (``Auditor.threats``; None: any).
    """

    name: str
    module: str
    params: dict[str, Any]
    access: Access
    reference: bool
    fitted: bool
    supports: bool
    threats: tuple[str, ...] | None = None

    @property
    def dynamic(self) -> bool:
        return self.access >= Access.DYNAMIC

    def audits(self, threat: str) -> bool:
        """Whether a game of a spec with ``threat`` (its threat model's kind) runs it: the
        family is of its kind, and it looks for that violation."""
        return self.supports and (self.threats is None or threat in self.threats)


class ChildProcess:
    """One sandboxed child, with its own staging and scratch folders: an auditor's
    (``auditgame.run.child``), or another server of untrusted work that speaks the same wire
    (``module``: the agents' tools, ``auditgame.agents.child``)."""

    def __init__(
        self,
        hello: dict[str, Any],
        hidden: tuple[Path, ...] = (),
        work: Path | None = None,
        fit: Path | None = None,
        module: str = "auditgame.run.child",
    ) -> None:
        _sweep_once()
        self.inputs = Path(tempfile.mkdtemp(prefix=f"auditgame-in-{os.getpid()}-"))
        self.scratch = Path(tempfile.mkdtemp(prefix=f"auditgame-scratch-{os.getpid()}-"))
        if fit is not None:
            shutil.copyfile(fit, self.inputs / "fit.safetensors")
            hello = {**hello, "fit": "fit.safetensors"}
        mounts = sandbox.Mounts(self.inputs, self.scratch, work=work, hidden=hidden)
        argv, env = sandbox.command(module, mounts)
        self.sealed = sandbox.sealed()
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env or None
        )
        self._next = 0
        try:
            self.info = self.request({"op": "hello", **hello}, START_SECONDS)["info"]
        except BaseException:
            self.close()
            raise

    def stage(self) -> tuple[str, Path]:
        """A fresh folder under the child's ``/in`` for one task's inputs."""
        self._next += 1
        name = str(self._next)
        folder = self.inputs / name
        folder.mkdir()
        return name, folder

    def request(self, message: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """Send one request; the reply's fields, or ``ChildError``. ``timeout``: seconds, or
        None to wait as long as it takes (a fitting stage, which trains its own models)."""
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            try:
                proc.stdin.write((json.dumps(message) + "\n").encode())
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise ChildError(f"the auditor's process is gone (exit {proc.poll()})") from exc
            reply = decode_reply(_read_line(proc, timeout))
            if reply.get("task") != message.get("task"):
                raise ChildError(
                    f"the reply answers task {reply.get('task')!r}, not {message.get('task')!r}"
                )
        except BaseException:
            # A request left unanswered (interrupted, say by a cancelled Ray task) leaves its
            # reply in the pipe, where it would answer the next task, for another organism:
            # a child that is not in step with the referee is stopped, never reused.
            _stop(proc)
            raise
        return checked_reply(reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._proc.kill()
        self._proc.wait()
        for folder in (self.inputs, self.scratch):
            shutil.rmtree(folder, ignore_errors=True)


_swept = False


def _sweep_once() -> None:
    global _swept
    if not _swept:
        _swept = True
        sweep_orphan_folders(Path(tempfile.gettempdir()))


def sweep_orphan_folders(root: Path) -> list[Path]:
    """Remove the staging and scratch folders under ``root`` whose referee process is gone.

    ``close`` removes a child's folders, and ``atexit`` closes the kept children, but a referee
    that is killed (an interrupted game, a cancelled worker) runs neither and leaves a copy of
    the organisms it was auditing in the temp folder. Each folder's name carries its referee's
    pid, so the next referee on the machine removes them; a folder of a live process, or of a
    pid it cannot see, stays. Returns the folders removed."""
    removed = []
    for folder in root.glob("auditgame-*-*-*"):
        kind, _, rest = folder.name.removeprefix("auditgame-").partition("-")
        pid = rest.partition("-")[0]
        if kind not in ("in", "scratch") or not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, under another user
    return True


def decode_reply(line: bytes) -> dict[str, Any]:
    """A child's reply line as data: a JSON object with a boolean ``ok``, no NaN or
    infinities (which JSON does not have, and which would pass a schema's range checks
    unnoticed in evidence), not nested past the parser's depth. Anything else is a
    ``ChildError``."""
    try:
        reply = json.loads(line, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise ChildError(f"reply is not JSON data: {str(exc)[:200]}") from exc
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ChildError("reply is not an object with 'ok'")
    return reply


def checked_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """``reply``, or its ``ok: false`` as a ``ChildError`` carrying the auditor's error."""
    if not reply["ok"]:
        raise ChildError(str(reply.get("error", "failed"))[:4000])
    return reply


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _read_line(proc: subprocess.Popen[bytes], timeout: float | None) -> bytes:
    """One reply line from ``proc``, within ``timeout`` seconds and ``MAX_REPLY_BYTES``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    size = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not sel.select(left):
                _stop(proc)
                raise ChildError(f"no answer within {timeout or 0:.0f} s (hard limit); stopped")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                proc.wait()
                raise ChildError(f"the auditor's process died (exit {proc.returncode})")
            chunks.append(chunk)
            size += len(chunk)
            if b"\n" in chunk:
                line, _, rest = b"".join(chunks).partition(b"\n")
                if rest:
                    _stop(proc)
                    raise ChildError("the auditor's process wrote past its reply; stopped")
                return line
            if size > MAX_REPLY_BYTES:
                _stop(proc)
                raise ChildError(f"reply over {MAX_REPLY_BYTES >> 20} MiB; stopped")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


# --- what the referee asks before a game ---------------------------------------------------


_described: dict[str, AuditorInfo] = {}


def auditor_info(
    name: str,
    params: dict[str, Any],
    family: str,
    hidden: tuple[Path, ...] = (),
    *,
    module: str | None = None,
) -> AuditorInfo:
    """Metadata of auditor ``name``: from its class if it ships in this package, else from a
    sandboxed child that imports the plugin's module (``module``, the module of a class this
    process already registered, or each installed plugin's), never in this process. A
    plugin's is asked once per process."""
    key = json.dumps([name, params, family, module], sort_keys=True, default=str)
    if key not in _described:
        _described[key] = _auditor_info(name, params, family, hidden, module)
    return _described[key]


def _auditor_info(
    name: str, params: dict[str, Any], family: str, hidden: tuple[Path, ...], module: str | None
) -> AuditorInfo:
    registry.load_builtins("auditor")
    cls = registry.registered("auditor", name)
    if cls is not None and registry.is_builtin(cls):
        instance = cls(**params)
        return AuditorInfo(
            name=name,
            module=cls.__module__,
            # As the child reports them (JSON data: a tuple comes back a list), so a finding's
            # parameters compare equal to the ones it was run with.
            params=json.loads(json.dumps(instance.get_params(), default=str)),
            access=cls.access,
            reference=cls.reference,
            fitted=issubclass(cls, FittedAuditor),
            supports=cls.supports(family),
            threats=None if cls.threats is None else tuple(cls.threats),
        )
    # A plugin: registered by a module this process imported (a test, a script), or by an
    # entry point, which is imported only inside the sandbox.
    if module is not None:
        modules = [module]
    else:
        modules = [cls.__module__] if cls is not None else registry.plugin_modules()
    errors = []
    for candidate in modules:
        hello = {"auditor": name, "module": candidate, "params": params, "family": family}
        try:
            child = ChildProcess(hello, hidden)
        except ChildError as exc:
            errors.append(f"{candidate}: {str(exc).strip().splitlines()[-1][:200]}")
            continue
        child.close()
        return _info(child.info, name)
    raise AuditgameError(
        f"auditor {name!r}: not built in, and no plugin registers it "
        f"({'; '.join(errors) or 'no plugins installed'})"
    )


def _info(raw: dict[str, Any], name: str) -> AuditorInfo:
    """A child's hello, checked: it speaks for the auditor it was asked about."""
    try:
        info = AuditorInfo(
            name=str(raw["auditor"]),
            module=str(raw["module"]),
            params=dict(raw["params"]),
            access=Access(int(raw["access"])),
            reference=bool(raw["reference"]),
            fitted=bool(raw["fitted"]),
            supports=bool(raw["supports"]),
            threats=None if raw.get("threats") is None else tuple(map(str, raw["threats"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChildError(f"auditor {name!r} described itself wrongly: {exc}") from exc
    if info.name != name:
        raise ChildError(f"asked about auditor {name!r}, the plugin answered for {info.name!r}")
    return info


# --- fitting stages ----------------------------------------------------------------------


def fit_record(info: AuditorInfo, family: str, root: Path) -> Path:
    """Where ``sealed_fit`` records the address of this auditor's fit for ``family``."""
    return Path(root) / family / f"{info.name}-{fit_key(info.name, info.params, family)}.json"


@dataclass(frozen=True)
class Fit:
    """A fit file and the SHA-256 the referee recorded when it was made (checked on load)."""

    path: Path
    sha256: str


def sealed_fit(
    info: AuditorInfo,
    family: str,
    root: Path,
    hidden: tuple[Path, ...] = (),
    code: str | None = None,
) -> Fit:
    """Fit ``info``'s auditor for ``family`` in a sandbox unless a recorded fit exists.

    The child sees its own work folder (``root/family/work/<auditor>``, for shadow zoos)
    and writes tensors to its scratch; the referee checks they are a safetensors file, stores
    them content-addressed (``root/family/<sha256>.safetensors``) and records the address in
    ``root/family/<auditor>-<fit id>.json``. A fit is made before any secret is unsealed.
    With ``code`` (a game's code fingerprint), a process or child that loaded other code
    raises ``CodeChanged``.
    """
    if code is not None and code_fingerprint() != code:
        raise CodeChanged(code, code_fingerprint(), "a fitting process")
    record = fit_record(info, family, root)
    folder = record.parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(record.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if record.is_file():
            return _recorded(record)
        work = folder / "work" / info.name
        work.mkdir(parents=True, exist_ok=True)
        hello = {
            "auditor": info.name,
            "module": info.module,
            "params": info.params,
            "family": family,
        }
        child = ChildProcess(hello, hidden, work=work)
        try:
            if code is not None and child.info.get("code") != code:
                raise CodeChanged(code, str(child.info.get("code")), f"{info.name}'s fit")
            reply = child.request({"op": "fit", "family": family, "work": str(work)}, None)
            made = child.scratch / str(reply.get("file", ""))
            if made.parent != child.scratch or not made.is_file():
                raise ChildError(f"{info.name}'s fit wrote no file")
            check_safetensors_header(made)
            tensors = load_file(str(made))
            tmp = folder / f".{record.stem}.tmp"
            save_file(tensors, str(tmp), metadata={"auditor": info.name, "family": family})
            sha = sha256_file(tmp)
            os.replace(tmp, folder / f"{sha}.safetensors")
        finally:
            child.close()
        tmp_record = record.with_name(f".{record.name}.tmp")
        tmp_record.write_text(json.dumps({"auditor": info.name, "sha256": sha}))
        os.replace(tmp_record, record)
        return _recorded(record)


def _recorded(record: Path) -> Fit:
    sha = str(json.loads(record.read_text())["sha256"])
    return Fit(record.parent / f"{sha}.safetensors", sha)


def checked_fit(fit: Fit) -> Path:
    """The fit's file, after checking it still hashes to what the referee recorded."""
    actual = sha256_file(fit.path) if fit.path.is_file() else "missing"
    if actual != fit.sha256:
        raise ZooError(
            fit.path,
            f"fit modified or missing: SHA-256 {actual[:16]}… was recorded as {fit.sha256[:16]}…",
            "delete it and its .json to refit",
        )
    return fit.path


# --- audits -------------------------------------------------------------------------------

_children: OrderedDict[str, ChildProcess] = OrderedDict()


def _child(
    info: AuditorInfo, family: str, fit: Fit | None, hidden: tuple[Path, ...]
) -> ChildProcess:
    key = json.dumps(
        [info.name, info.module, info.params, family, fit.sha256 if fit else None], sort_keys=True
    )
    child = _children.pop(key, None)
    if child is None or child._proc.poll() is not None:
        if child is not None:
            child.close()
        hello = {
            "auditor": info.name,
            "module": info.module,
            "params": info.params,
            "family": family,
        }
        child = ChildProcess(hello, hidden, fit=checked_fit(fit) if fit else None)
    _children[key] = child
    while len(_children) > KEEP_CHILDREN:
        _children.popitem(last=False)[1].close()
    return child


@atexit.register
def close_children() -> None:
    while _children:
        _children.popitem()[1].close()


def audit(
    info: AuditorInfo,
    organism: Organism,
    budget: Budget,
    seed: int,
    *,
    clean: Dataset | None,
    traffic: torch.Tensor | None,
    fit: Fit | None = None,
    hidden: tuple[Path, ...] = (),
    code: str | None = None,
) -> tuple[Finding, bool]:
    """Audit ``organism`` with ``info``'s auditor in its sandbox; the finding (an error
    finding on any failure of the auditor's side) and whether the run was sealed. With
    ``code`` (a game's code fingerprint), a child that loaded other code raises
    ``CodeChanged``."""
    start = time.perf_counter()
    sealed = sandbox.sealed()
    child = None
    try:
        child = _child(info, organism.card.family, fit, hidden)
        loaded = str(child.info.get("code"))
        if code is not None and loaded != code:
            _forget(child)
            raise CodeChanged(code, loaded, f"{info.name}'s child")
        sealed = child.sealed
        name, folder = child.stage()
        try:
            stage_inputs(folder, organism, clean, traffic)
            timeout = 2 * budget.seconds + HARD_LIMIT_SECONDS
            message = {"op": "audit", "task": name, "budget": budget.__dict__, "seed": seed}
            reply = child.request(message, timeout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        finding = Finding.model_validate(reply.get("finding"))
        if finding.auditor != info.name or finding.params != info.params:
            raise ChildError(
                f"the finding speaks for {finding.auditor!r} with other parameters, not for "
                f"{info.name!r} as run"
            )
    except (ChildError, ValueError) as exc:
        finding = Finding(
            auditor=info.name,
            params=info.params,
            p_violation=None,
            cost=Cost(seconds=time.perf_counter() - start, forward=0, backward=0),
            error=f"rejected by the referee: {str(exc)[:2000]}",
        )
        # A child that broke the protocol was stopped; one that answered badly may go on.
        if child is not None and child._proc.poll() is not None:
            _forget(child)
    return finding, sealed


def _forget(child: ChildProcess) -> None:
    for key in [k for k, c in _children.items() if c is child]:
        del _children[key]
    child.close()


def stage_inputs(
    folder: Path, organism: Organism, clean: Dataset | None, traffic: torch.Tensor | None
) -> None:
    """Copy the organism's public files (hard links where possible) and write the data the
    auditor's access allows, as safetensors."""
    target = folder / organism.id
    target.mkdir()
    for name in (CARD, WEIGHTS):
        try:
            os.link(organism.path / name, target / name)
        except OSError:
            shutil.copyfile(organism.path / name, target / name)
    if clean is not None:
        tensors = {"x": clean.x.contiguous(), "y": clean.y.contiguous()}
        save_file(tensors, str(folder / "clean.safetensors"))
    if traffic is not None:
        save_file({"x": traffic.contiguous()}, str(folder / "traffic.safetensors"))
