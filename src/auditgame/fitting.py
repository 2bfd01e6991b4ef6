"""Auditors that learn before they audit: a fitting stage, declared, cached and kept apart.

Some detectors are calibrated or trained on models built for them: every static image
detector's null from the family's clean reference models (``reference_zoo``, shared, see
``auditors.calibrated``), MNTD's meta-classifier and ULP's litmus patterns from a *shadow
zoo* of their own. That is the auditor's own fitting data, and the rules
are those of any learned detector: it may use the family's public recipe (``Family.train``,
the data the card names) and attacks of its own choosing, never an evaluated organism or a
secret of the evaluated zoo.

A ``FittedAuditor`` writes ``fit`` (family name and a work folder in, named tensors out) and
reads its fit back in ``load_fitted``. ``ensure_fitted`` runs the fit once per (auditor,
parameters, family, code version) and caches it as safetensors, so a game fits in the referee
before any task is sent, and every worker, local or remote, loads the same file.

Shadow zoos are ordinary zoos built from a seed in a namespace of their own
(``shadow_seed``), so their organisms are trained from seeds disjoint from any zoo built from
a small integer seed, and with attacks the evaluated zoo's secrets do not choose.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file, save_file

# FittedAuditor lives beside Auditor: an auditor module that subclasses it is imported by the
# auditors package, which importing this module's Auditor loads, so defining it here would
# make that import circular.
from auditgame.auditors.base import Auditor, FittedAuditor
from auditgame.provenance import code_fingerprint

SHADOW_NAMESPACE = 0x5AD0_2026


def fit_key(name: str, params: dict[str, object], family: str) -> str:
    """Same auditor, parameters, family and package source: same fit."""
    text = json.dumps([name, params, family, code_fingerprint()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fit_id(auditor: FittedAuditor, family: str) -> str:
    return fit_key(auditor.name, auditor.get_params(), family)


def fit_path(auditor: FittedAuditor, family: str, root: Path) -> Path:
    """Where ``ensure_fitted`` keeps this auditor's fit for ``family`` under ``root``."""
    return Path(root) / family / f"{auditor.name}-{fit_id(auditor, family)}.safetensors"


def ensure_fitted(auditor: FittedAuditor, family: str, root: Path) -> Path:
    """Fit ``auditor`` for ``family`` unless a cached fit exists; returns the fit's file.

    Concurrent callers wait on a file lock and the fit is written atomically, so an
    interrupted fit leaves nothing behind that a later call would mistake for a finished one.
    """
    root = Path(root)
    path = fit_path(auditor, family, root)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            tensors = auditor.fit(family, root / family / "work")
            tmp = path.with_name(f".{path.name}.tmp")
            contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            save_file(contiguous, tmp, metadata={"auditor": auditor.name, "family": family})
            os.replace(tmp, path)
    return path


def load_fit(auditor: FittedAuditor, path: Path) -> None:
    """Load a fit written by ``ensure_fitted`` into ``auditor`` (safetensors, no pickle)."""
    auditor.load_fitted(load_file(path))


def fit_here(auditor: Auditor, family: str, root: Path) -> Path | None:
    """``ensure_fitted`` and load, for an auditor that has a fitting stage; else nothing."""
    if not isinstance(auditor, FittedAuditor):
        return None
    path = ensure_fitted(auditor, family, root)
    load_fit(auditor, path)
    return path


def shadow_seed(fit_seed: int, purpose: str = "shadow") -> int:
    """The seed of a shadow zoo: drawn from a namespace no evaluated zoo's seed falls in, and
    one per ``purpose``, so reference models never share a training seed with a shadow zoo's
    (a meta-classifier's null must not be scored on models it was trained on)."""
    digest = hashlib.sha256(f"{purpose}:{SHADOW_NAMESPACE}:{fit_seed}".encode()).digest()
    return int.from_bytes(digest[:7], "little")


def shadow_zoo(
    family: str,
    n: int,
    fit_seed: int,
    workdir: Path,
    *,
    attacks: Sequence[str] = ("jumbo",),
    workers: int | None = None,
) -> Path:
    """Build (or reuse) a shadow zoo of ``n`` organisms, half clean, under ``workdir``.

    Returns the zoo folder; its key lies beside it, and the auditor that built it may read
    its secrets: these are the auditor's own models.
    """
    from auditgame.zoo import build_zoo

    seed = shadow_seed(fit_seed)
    out = Path(workdir) / f"shadow-{'-'.join(attacks)}-n{n}-s{fit_seed}"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Several auditors share one shadow zoo; two processes fitting at once build it in turn.
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_zoo(family, n, seed, out, attacks=attacks, workers=workers or os.cpu_count() or 1)
    return out


MAX_REFERENCES = 1024
"""The most clean references the referee trains for one auditor's calibration."""


def reference_zoo(family: str, n: int, seed: int, *, workers: int | None = None) -> Path:
    """Build (or reuse) ``n`` clean reference models of ``family`` in the per-user cache.

    The family's public recipe from seeds of their own namespace: what a clean organism of the
    family looks like, the null every ``Calibrated`` auditor is judged against. One set per
    (family, n, seed), shared by every auditor, game and audit that calibrates on it: a game's
    referee builds it before fitting (``references_needed``), and each sandboxed fit reads it
    from its read-only view of the cache. Nothing in it is secret: every organism is clean
    and the seeds are public.
    """
    from auditgame.cache import cache_dir
    from auditgame.zoo import MANIFEST, Manifest, build_zoo

    out = cache_dir() / f"references-{family}-n{n}-s{seed}"
    manifest = out / MANIFEST
    # A finished set is only read: a sandbox sees it read-only.
    if manifest.is_file() and Manifest.model_validate_json(manifest.read_bytes()).complete:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build_zoo(
            family,
            n,
            shadow_seed(seed, "references"),
            out,
            attacks=(),
            workers=workers or os.cpu_count() or 1,
        )
    return out


def references_needed(params: dict[str, object]) -> tuple[int, int] | None:
    """The (n_reference, reference_seed) a calibrated auditor with these (normalised)
    parameters fits on, or None: read as data, so the referee can build the references
    without running the auditor's code.

    Raises:
        ValueError: a calibrated auditor asks for more than ``MAX_REFERENCES`` references.
    """
    n, seed = params.get("n_reference"), params.get("reference_seed")
    if params.get("calibrate") is not True or not isinstance(n, int) or not isinstance(seed, int):
        return None
    if not 3 <= n <= MAX_REFERENCES:
        raise ValueError(f"n_reference must be in [3, {MAX_REFERENCES}], got {n}")
    return n, seed
