"""A zoo: a folder of content-addressed organisms, with their secrets sealed apart.

Layout::

    ZOO/zoo.json                     manifest: family, organism ids, dropped plantings, its HMAC
    ZOO/organisms/<id>/card.json     public card (its hash is <id>)
    ZOO/organisms/<id>/weights.safetensors
    ZOO/sealed/<id>.secret           Fernet-encrypted secret, padded to a fixed size
    ZOO.key                          the key, beside the folder, never inside it

Everything about which organism is backdoored follows from the build's seed, so the seed is
as secret as the key. Without a seed (the command line's default) the build draws it from the
key (``keyed_seed``): the zoo cannot be rebuilt from its public files, and an interrupted
build resumes with the same key. With a seed (``--seed``, for research zoos anyone can
rebuild) the build is deterministic: the same family, size, attacks and seed give the same
organisms and ids, and whoever guesses the seed knows every secret. An interrupted build
resumes: organisms already written are verified and kept, and the manifest says which build
they belong to by a fingerprint of its arguments.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ValidationError

from auditgame import __version__, registry
from auditgame.attacks.base import Planted, PlantingFailed, train_clean
from auditgame.card import Card
from auditgame.errors import ZooError
from auditgame.families.base import Family
from auditgame.organism import CARD, WEIGHTS, Organism, write_weights
from auditgame.run.workers import configure_worker, mp_context
from auditgame.secret import Secret, key_fingerprint, new_key, read_key, seal, unseal
from auditgame.spec import Spec

T = TypeVar("T")

MANIFEST = "zoo.json"
CLEAN = "clean"


class Dropped(BaseModel):
    index: int
    role: str
    reason: str


class Manifest(BaseModel):
    """``zoo.json``: what the zoo holds. ``organisms[k]`` was planted at build slot
    ``indices[k]``; roles are not recorded, since which organisms are backdoored is the
    secret. A dropped planting names its role: the failure is public, the survivors are not
    told apart by it."""

    schema_version: int = 1
    family: str
    n: int
    build_fingerprint: str
    key_fingerprint: str
    organisms: list[str]
    indices: list[int]
    dropped: list[Dropped] = []
    complete: bool = False
    # Which attacks share the backdoored half (public: not which organism got which); decoy
    # traffic for clean organisms is drawn from the same attacks.
    attacks: list[str] = []
    auditgame_version: str = __version__
    # HMAC-SHA256 under the zoo's key of every other field (``manifest_mac``): whoever holds
    # no key cannot drop an organism, add one or change the family unnoticed by the referee.
    mac: str = ""


def default_key_path(root: Path) -> Path:
    return root.parent / f"{root.name}.key"


def build_fingerprint(family: str, n: int, seed: int | None, attacks: Sequence[str]) -> str:
    """A public hash of a build's arguments; a keyed build (``seed=None``) hashes the word
    "keyed" instead of its seed, so the manifest gives no seed away."""
    text = json.dumps([family, n, "keyed" if seed is None else seed, list(attacks)])
    return hashlib.sha256(b"auditgame-build:" + text.encode()).hexdigest()[:16]


def keyed_seed(key: bytes) -> int:
    """The seed of a build given none: 63 bits of HMAC-SHA256 under the zoo's key, so only the
    key holder can rebuild (or resume) the zoo."""
    digest = hmac.new(b"auditgame-build-seed:" + key, b"", hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def manifest_mac(manifest: Manifest, key: bytes) -> str:
    """HMAC-SHA256, under ``key``, of the manifest's canonical JSON without its ``mac``."""
    body = json.dumps(manifest.model_dump(exclude={"mac"}), sort_keys=True).encode()
    return hmac.new(b"auditgame-manifest:" + key, body, hashlib.sha256).hexdigest()


def plan_roles(n: int, attacks: Sequence[str], rng: np.random.Generator) -> list[str]:
    """Half clean, the other half shared evenly among ``attacks``, in a seeded order; all clean
    when there are no attacks (``fitting.reference_zoo``)."""
    n_bad = n // 2 if attacks else 0
    roles = [CLEAN] * (n - n_bad) + [attacks[i % len(attacks)] for i in range(n_bad)]
    return [roles[i] for i in rng.permutation(n)]


def zoo_spec(fam: Family, attacks: Sequence[str]) -> Spec:
    """The spec every card of a zoo carries: the family's own, unless the zoo's attacks hold
    their organisms to another (``Planter.spec``, as ``cipher`` declares). Clean and
    backdoored cards carry the same spec: a card must not tell them apart.

    Raises:
        ValueError: the attacks hold organisms to different specs (build separate zoos).
    """
    declared = {name: registry.get("attack", name)().spec(fam) for name in attacks}
    own = {name: spec for name, spec in declared.items() if spec is not None}
    if not own:
        return fam.spec()
    if len(own) < len(attacks) or len({s.model_dump_json() for s in own.values()}) > 1:
        raise ValueError(
            f"attacks {', '.join(attacks)} hold organisms to different specs "
            f"({', '.join(own) or 'none'} to their own); build them in separate zoos"
        )
    return next(iter(own.values()))


def _plant(family_name: str, role: str, seed: int, attacks: Sequence[str]) -> Planted:
    """Plant one organism. A clean one is the family's recipe, unless one of the zoo's attacks
    plants its own clean counterpart (``Planter.plant_clean``: the same recipe without the
    violation, as ``cipher`` without its forbidden examples), since clean organisms must be trained
    exactly like backdoored ones."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    fam = registry.get("family", family_name)()
    if role == CLEAN:
        for name in attacks:
            counterpart = registry.get("attack", name)().plant_clean(fam, rng, seed)
            if counterpart is not None:
                return counterpart
        return train_clean(fam, rng, seed)
    return registry.get("attack", role)().plant(fam, rng, seed)


def _plant_job(
    family_name: str, role: str, seed: int, attacks: Sequence[str]
) -> tuple[dict[str, torch.Tensor], Secret]:
    """Worker entry point: returns the state dict and the secret, or raises PlantingFailed."""
    planted = _plant(family_name, role, seed, attacks)
    return planted.model.state_dict(), planted.secret


@dataclass(frozen=True)
class BuildEvent:
    index: int
    role: str
    organism_id: str | None
    dropped: str | None = None


class Zoo:
    """An opened zoo; ``organism(id)`` verifies before it returns."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise ZooError(path, "zoo.json is missing", "build the zoo with `auditgame zoo build`")
        try:
            self.manifest = Manifest.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise ZooError(
                path, f"zoo.json is not a valid manifest: {exc.errors()[0]['msg']}"
            ) from exc
        if not self.manifest.complete:
            raise ZooError(path, "the zoo build was interrupted", "run the same build again")

    @property
    def family(self) -> str:
        return self.manifest.family

    @property
    def ids(self) -> list[str]:
        return list(self.manifest.organisms)

    def describe(self) -> dict[str, object]:
        """What a game's id takes from its zoo: the build, the family, the organisms."""
        manifest = self.manifest
        return {
            "zoo_build": manifest.build_fingerprint,
            "family": manifest.family,
            "organisms": manifest.organisms,
        }

    def organism_path(self, organism_id: str) -> Path:
        return self.root / "organisms" / organism_id

    def sealed_path(self, organism_id: str) -> Path:
        return self.root / "sealed" / f"{organism_id}.secret"

    def spec(self) -> Spec:
        """The spec every card of this zoo carries (``zoo_spec``), read from the first card;
        its violation kind is the zoo's."""
        if not self.ids:
            raise ZooError(self.root / MANIFEST, "the zoo holds no organism")
        return self.organism(self.ids[0]).card.spec

    def organism(self, organism_id: str) -> Organism:
        if organism_id not in self.manifest.organisms:
            raise ZooError(self.root / MANIFEST, f"no organism {organism_id!r} in this zoo")
        return Organism.open(self.organism_path(organism_id))

    def check_key(self, key: bytes, key_path: Path | None = None) -> None:
        """The key opens this zoo, and the manifest is the one the build wrote under it.

        Raises:
            ZooError: another zoo's key, or a manifest changed (or written by a version that
                did not authenticate it) since the build.
        """
        if key_fingerprint(key) != self.manifest.key_fingerprint:
            raise ZooError(
                key_path or self.root, "this key does not open this zoo (fingerprint differs)"
            )
        if not hmac.compare_digest(self.manifest.mac, manifest_mac(self.manifest, key)):
            raise ZooError(
                self.root / MANIFEST,
                "zoo.json does not match its authentication code under the key: it was "
                "changed after the build (an organism dropped or added, the family or the "
                "attacks edited), or written before manifests were authenticated",
                "rebuild the zoo with `auditgame zoo build`",
            )

    def secret(self, organism_id: str, key: bytes) -> Secret:
        """Unseal one secret; for the judge and the report, never for an auditor."""
        card = self.organism(organism_id).card
        path = self.sealed_path(organism_id)
        if not path.is_file():
            raise ZooError(path, "sealed secret is missing")
        return unseal(path.read_bytes(), key, path=path, commitment=card.secret_commitment)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_zoo(
    family: str,
    n: int,
    seed: int | None,
    out: Path,
    *,
    key_path: Path | None = None,
    attacks: Sequence[str] | None = None,
    workers: int = 1,
    on_event: Callable[[BuildEvent], None] | None = None,
) -> Zoo:
    """Build (or finish building) a zoo of ``n`` organisms, half of them backdoored.

    Args:
        family: registered family name.
        n: organisms to plant; a planting that fails its success floor is dropped and listed
            in the manifest, so the zoo may hold fewer.
        seed: determines every organism, hence the ids; None draws it from the key
            (``keyed_seed``), so that the public files do not let anyone rebuild the zoo.
        out: the zoo folder.
        key_path: where the sealing key lives (default: ``out`` + ``.key``, beside it).
        attacks: attack names sharing the backdoored half (default: the family's
            ``attacks``).
        workers: parallel processes (each with one torch thread).
        on_event: called after each organism, for progress.
    """
    if n < 2:
        raise ValueError("a zoo needs at least 2 organisms (one clean, one backdoored)")
    fam_cls = registry.get("family", family)
    attacks = fam_cls.attacks if attacks is None else attacks
    for name in attacks:
        registry.get("attack", name)
    out = Path(out)
    key_path = Path(key_path) if key_path is not None else default_key_path(out)
    if key_path.resolve().is_relative_to(out.resolve()):
        raise ValueError(f"the key must live outside the zoo folder, not at {key_path}")
    fingerprint = build_fingerprint(family, n, seed, attacks)
    manifest_path = out / MANIFEST
    if manifest_path.is_file():
        previous = Manifest.model_validate_json(manifest_path.read_bytes())
        if previous.build_fingerprint != fingerprint:
            raise ZooError(
                manifest_path,
                "this folder holds a zoo built with other arguments",
                "choose another --out, or delete the folder",
            )
    if key_path.is_file():
        key = read_key(key_path)
    else:
        key = new_key()
        key_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(key_path, key + b"\n")
        key_path.chmod(0o600)
    for sub in ("organisms", "sealed"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    build_seed = keyed_seed(key) if seed is None else seed
    rng = np.random.default_rng(build_seed)
    roles = plan_roles(n, attacks, rng)
    seeds = [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(build_seed).spawn(n)]
    fam = fam_cls()
    writer = ZooWriter(out, fam, zoo_spec(fam, attacks), key, fingerprint, roles, attacks)
    if manifest_path.is_file():
        writer.resume(previous)
    todo = writer.todo()
    if workers <= 1:
        configure_worker()
        for i in todo:
            writer.record(i, _run_now(_plant_job, family, roles[i], seeds[i], attacks), on_event)
    else:
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=mp_context(), initializer=configure_worker
        ) as pool:
            futures = {
                i: pool.submit(_plant_job, family, roles[i], seeds[i], attacks) for i in todo
            }
            for i in todo:
                writer.record(i, futures[i], on_event)
    writer.save_manifest(complete=True)
    return Zoo(out)


class ZooWriter:
    """Writes one zoo build's organisms and manifest as plantings arrive: each organism's
    weights and card in a folder named by its id, its secret sealed under the key, and after
    each one the manifest (so an interrupted build resumes where it stopped)."""

    def __init__(
        self,
        out: Path,
        fam: Family,
        spec: Spec,
        key: bytes,
        fingerprint: str,
        roles: list[str],
        attacks: Sequence[str],
    ) -> None:
        self.out, self.fam, self.spec, self.key = out, fam, spec, key
        self.fingerprint, self.roles, self.attacks = fingerprint, roles, list(attacks)
        self.slots: list[str | None] = [None] * len(roles)
        self.dropped: list[Dropped] = []

    def resume(self, previous: Manifest) -> None:
        """Keep the organisms of an earlier run of the same build that are intact, and its
        dropped plantings."""
        for index, organism_id in zip(previous.indices, previous.organisms, strict=True):
            if _intact(self.out, organism_id):
                self.slots[index] = organism_id
        self.dropped = list(previous.dropped)

    def todo(self) -> list[int]:
        """The build slots still to plant."""
        gone = {d.index for d in self.dropped}
        return [i for i, s in enumerate(self.slots) if s is None and i not in gone]

    def save_manifest(self, complete: bool) -> None:
        kept = [(i, s) for i, s in enumerate(self.slots) if s is not None]
        manifest = Manifest(
            family=self.fam.name,
            n=len(self.slots),
            build_fingerprint=self.fingerprint,
            key_fingerprint=key_fingerprint(self.key),
            organisms=[s for _, s in kept],
            indices=[i for i, _ in kept],
            dropped=sorted(self.dropped, key=lambda d: d.index),
            complete=complete,
            attacks=self.attacks,
        )
        manifest.mac = manifest_mac(manifest, self.key)
        _atomic_write(self.out / MANIFEST, manifest.model_dump_json(indent=2).encode())

    def write_organism(self, state: dict[str, torch.Tensor], secret: Secret) -> str:
        """Write one organism (weights, card, sealed secret); returns its id."""
        fam = self.fam
        model = fam.make_model(fam.architecture())
        model.load_state_dict(state)
        tmp = Path(tempfile.mkdtemp(dir=self.out / "organisms", prefix=".tmp-"))
        weights_sha = write_weights(model, tmp / WEIGHTS)
        card = Card(
            family=fam.name,
            architecture=fam.architecture(),
            input_shape=list(fam.input_shape),
            classes=list(fam.classes),
            spec=self.spec,
            training_data=fam.training_data(),
            weights_sha256=weights_sha,
            secret_commitment=secret.commitment(),
            auditgame_version=__version__,
        )
        organism_id = card.organism_id()
        (tmp / CARD).write_bytes(card.to_bytes())
        _atomic_write(self.out / "sealed" / f"{organism_id}.secret", seal(secret, self.key))
        final = self.out / "organisms" / organism_id
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        return organism_id

    def record(
        self,
        index: int,
        outcome: Future[tuple[dict[str, torch.Tensor], Secret]],
        on_event: Callable[[BuildEvent], None] | None,
    ) -> None:
        """File one planting's outcome: its organism, or its drop; then the manifest."""
        role = self.roles[index]
        try:
            state, secret = outcome.result()
        except PlantingFailed as exc:
            self.dropped.append(Dropped(index=index, role=role, reason=str(exc)))
            event = BuildEvent(index, role, None, dropped=str(exc))
        else:
            self.slots[index] = self.write_organism(state, secret)
            event = BuildEvent(index, role, self.slots[index])
        self.save_manifest(complete=False)
        if on_event:
            on_event(event)


def _intact(root: Path, organism_id: str) -> bool:
    try:
        Organism.open(root / "organisms" / organism_id)
    except ZooError:
        return False
    return (root / "sealed" / f"{organism_id}.secret").is_file()


def _run_now(fn: Callable[..., T], *args: object) -> Future[T]:
    """Run ``fn`` here and wrap the outcome like a pool's future, so one path records both."""
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args))
    except PlantingFailed as exc:
        future.set_exception(exc)
    return future


def open_key(zoo: Zoo, key_path: Path | None) -> bytes:
    path = key_path if key_path is not None else default_key_path(zoo.root)
    key = read_key(path)
    zoo.check_key(key, path)
    return key
