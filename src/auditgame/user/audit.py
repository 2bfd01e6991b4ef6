"""Auditing a model from outside a zoo with the auditors that audit organisms, unchanged.

An auditor sees a ``Subject``: a model, a card and the data its access allows. For a zoo
organism the family supplies the card and the data; here the user's spec file does
(``auditgame.user.spec``). The card gets the placeholder family ``"user"``, its id hashes the
weights' hash like an organism's, and it commits to no secret, since there is none. Clean
samples come from a file the user provides (split once, with a fixed seed, into what the
auditor sees and what the witness is checked on) or from a built-in family whose task
matches. Without held-out samples the witness cannot be checked, and the result says so.

Which auditors may run follows their tags: the task's modality (images; language models
with ``--hf``), no family restriction and no run-time traffic (only a game prepares it). An
auditor with a fitting stage learns on a family's shadow zoo (``auditgame.fitting``), and a
user's model belongs to no family: it is fitted on the family the spec names as
``fit_family``, or else runs only if its fit needs no family.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from safetensors.torch import load_file
from torch import nn

from auditgame import __version__, metrics, registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, FittedAuditor
from auditgame.card import Card
from auditgame.errors import AuditgameError, RegistryError, ZooError
from auditgame.families.base import Dataset, Family
from auditgame.finding import Finding
from auditgame.fitting import fit_here
from auditgame.organism import check_safetensors_header
from auditgame.subject import Subject
from auditgame.user.model import (
    LoadedModel,
    ModelFileError,
    check_outputs,
    load_arch_model,
    load_hf_model,
    refuse_pickle,
)
from auditgame.user.spec import (
    AuditorChoice,
    CleanDataFamily,
    ImageClassification,
    LanguageModel,
    SpecFileError,
    load_spec,
)
from auditgame.violation import kind_of

USER_FAMILY = "user"
NO_SECRET = "none: not a zoo organism"
SPLIT_SEED = 0
_MODALITY_WORDS = {"image": "image classifiers", "text": "language models"}


class WitnessCheck(BaseModel):
    """The spec's check of a finding's trigger on held-out clean samples.

    Attributes:
        checked: whether it was measured; ``note`` says why not.
        asr: fraction of held-out inputs (of other labels) the trigger sends to the target; for
            a witness that is a whole input (a language model's prompts), what the threat
            model measures of it (REASR).
        in_threat_model: whether the spec forbids that trigger at all.
        violates: whether it violates the spec: ``in_threat_model and asr >= tau`` for an
            image trigger; a prompt whose reply is its target verbatim for a language model.
        n_heldout: held-out samples it was measured on.
    """

    checked: bool
    asr: float | None = None
    in_threat_model: bool | None = None
    violates: bool | None = None
    n_heldout: int = 0
    note: str = ""


@dataclass(frozen=True)
class CleanSplit:
    """Clean samples: ``audit`` for the auditor (at most ``Budget.n_clean``), ``heldout`` for
    the witness check (never shown to the auditor); ``source`` says where they came from."""

    audit: Dataset | None
    heldout: Dataset | None
    source: str


@dataclass(frozen=True)
class OwnAudit:
    """What ``audit_own_model`` found: the card it built, one checked finding per auditor, and
    notes on how the auditors were run (a calibrated auditor run by its rule without a fit)."""

    path: Path
    card: Card
    clean: CleanSplit
    findings: list[tuple[Finding, WitnessCheck]]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": str(self.path),
            "organism_id": self.card.organism_id(),
            "card": self.card.model_dump(mode="json"),
            "clean_data": {
                "source": self.clean.source,
                "n_audit": len(self.clean.audit) if self.clean.audit is not None else 0,
                "n_heldout": len(self.clean.heldout) if self.clean.heldout is not None else 0,
            },
            "findings": [
                {**finding.model_dump(mode="json"), "witness": witness.model_dump()}
                for finding, witness in self.findings
            ],
            "notes": self.notes,
        }

    def summary(self) -> list[str]:
        """The notes, then one line per auditor, for people: verdict, target and what the
        witness showed."""
        lines = list(self.notes)
        for finding, witness in self.findings:
            if finding.error is not None:
                lines.append(f"{finding.auditor}: failed: {finding.error.splitlines()[0]}")
                continue
            assert finding.p_violation is not None  # a finding without an error has one
            flagged = finding.p_violation >= metrics.DEFAULT_THRESHOLD
            line = f"{finding.auditor}: p_violation {finding.p_violation:.2f}, "
            line += "FLAGGED" if flagged else "not flagged"
            if finding.target is not None:
                line += f"; suspected target {finding.target} ({self._label(finding.target)})"
            if witness.checked:
                inside = "inside" if witness.in_threat_model else "outside"
                # A witness that falls short shows no violation; it cannot prove there is none.
                verdict = "violates the spec" if witness.violates else "shows no violation"
                if self.card.spec.threat_model.needs_samples:
                    effect = (
                        f"moves {witness.asr:.0%} of held-out inputs of other labels to the "
                        f"target ({witness.n_heldout} held out)"
                    )
                    rule = f"tau {self.card.spec.tau:g}"
                else:
                    effect = (
                        f"its prompts reproduce the targets they name at {witness.asr:.2f} "
                        "(REASR: greedy replies, character BLEU)"
                    )
                    rule = "a reply that is its target verbatim"
                line += f"; witness: {effect}, {inside} the threat model: {verdict} ({rule})"
            else:
                line += f"; witness not checked: {witness.note}"
            lines.append(line)
        return lines

    def _label(self, target: int) -> str:
        classes = self.card.classes
        return repr(classes[target]) if 0 <= target < len(classes) else "?"


def audit_own_model(
    path: Path,
    spec_path: Path,
    *,
    arch: str | None = None,
    hf: bool = False,
    auditor: str | None = None,
    params: dict[str, Any] | None = None,
    budget: Budget | None = None,
    seed: int = 0,
    fit_root: Path = Path("auditgame-data/fits"),
    on_start: Callable[[str], None] | None = None,
) -> OwnAudit:
    """Load and verify the user's model, build its card and subjects, run each auditor and
    check its witness. Every problem with the input is raised before any auditor runs.

    ``auditor`` (with ``params``) replaces the spec's auditors; ``params`` alone are merged
    into each of the spec's. Fits of auditors with a fitting stage are cached under
    ``fit_root``, shared with zoo audits.
    """
    budget = budget or Budget()
    spec = load_spec(spec_path)
    loaded = _load(path, spec, spec_path, arch=arch, hf=hf)
    feature_layer(loaded.model, spec, spec_path)  # a wrong name fails before any auditor runs
    model, interface = kind_of(spec.threat_model.kind).user_model(path, loaded.model, spec)
    loaded = replace(loaded, model=model)
    chosen = _auditors(spec, auditor, params or {}, path)
    card = Card(
        family=USER_FAMILY,
        architecture=loaded.architecture,
        input_shape=list(spec.input_shape) if isinstance(spec, ImageClassification) else [],
        classes=list(spec.labels) if isinstance(spec, ImageClassification) else [],
        spec=spec.spec,
        training_data=spec.training_data,
        weights_sha256=loaded.weights_sha256,
        secret_commitment=NO_SECRET,
        auditgame_version=__version__,
    )
    clean = (
        load_clean(spec, budget.n_clean)
        if isinstance(spec, ImageClassification)
        else CleanSplit(None, None, "none")
    )
    for instance, _ in chosen:
        if instance.access >= Access.CLEAN_DATA and clean.audit is None:
            raise SpecFileError(
                f"{spec_path}: {instance.name} needs clean samples (access CLEAN_DATA); "
                "add clean_data: {path: clean.safetensors} (tensors x and y) or "
                "clean_data: {family: NAME} to the spec"
            )
    notes: list[str] = []
    auditors = [_fit(instance, set(given), spec, fit_root, notes) for instance, given in chosen]
    findings = []
    for instance in auditors:
        if on_start is not None:
            on_start(instance.name)
        model = copy.deepcopy(loaded.model)
        subject = Subject(
            model=model,
            card=card,
            access=instance.access,
            clean=clean.audit if instance.access >= Access.CLEAN_DATA else None,
            features=feature_layer(model, spec, spec_path),
            interface=interface,
        )
        finding = instance.audit(subject, budget, seed=seed)
        check = check_witness(card, loaded.model, finding, clean.heldout, interface)
        findings.append((finding, check))
    return OwnAudit(path, card, clean, findings, notes)


def _load(
    path: Path,
    spec: ImageClassification | LanguageModel,
    spec_path: Path,
    *,
    arch: str | None,
    hf: bool,
) -> LoadedModel:
    if hf:
        if arch is not None:
            raise ModelFileError("--arch", "is for a safetensors file; --hf loads a folder")
        if not isinstance(spec, LanguageModel):
            raise SpecFileError(
                f"{spec_path}: --hf loads a language model, but the spec says task: {spec.task}"
            )
        loaded = load_hf_model(path)
        vocab = loaded.architecture["vocab_size"]
        if spec.vocab_size is not None and spec.vocab_size != vocab:
            raise SpecFileError(
                f"{spec_path}: vocab_size is {spec.vocab_size}, but the model's config says {vocab}"
            )
        return loaded
    if not isinstance(spec, ImageClassification):
        raise SpecFileError(
            f"{spec_path}: task: {spec.task} is loaded from a Hugging Face folder: add --hf"
        )
    if arch is None:
        raise ModelFileError(
            path, "needs --arch MODULE:CLASS, the nn.Module class its weights belong to"
        )
    loaded = load_arch_model(path, arch, spec.architecture.kwargs)
    check_outputs(loaded.model, list(spec.input_shape), len(spec.labels))
    return loaded


def _auditors(
    spec: ImageClassification | LanguageModel,
    name: str | None,
    params: dict[str, Any],
    path: Path,
) -> list[tuple[Auditor, dict[str, Any]]]:
    """Instantiate the chosen auditors, refusing those that cannot take a user's model; each
    with the parameters the user gave it."""
    if name is not None:
        choices = [AuditorChoice(name=name, params=params)]
    else:
        choices = [
            AuditorChoice(name=c.name, params={**c.params, **params})
            for c in spec.auditor_choices()
        ]
    if not choices:
        choices = [
            AuditorChoice(name=n, params=params)
            for n in registry.names("auditor")
            if _usable(registry.get("auditor", n), spec) is None
        ]
    if not choices:
        words = _MODALITY_WORDS.get(spec.modality, spec.modality)
        raise AuditgameError(
            f"{path}: the model loaded and passed validation, but no installed auditor can "
            f"audit {words} from outside a zoo yet (see `auditgame list auditors`; a plugin "
            "can add one, docs/plugins.md)"
        )
    auditors = []
    for choice in choices:
        cls = registry.get("auditor", choice.name)
        problem = _usable(cls, spec)
        if problem is not None:
            raise AuditgameError(f"{choice.name} {problem}")
        try:
            auditors.append((cls(**choice.params), choice.params))
        except (TypeError, ValueError) as exc:
            raise AuditgameError(
                f"{choice.name}: bad parameters {choice.params}: {exc}; its parameters: "
                f"{', '.join(cls.param_names())}"
            ) from exc
    return auditors


def _usable(cls: type[Auditor], spec: ImageClassification | LanguageModel) -> str | None:
    """Why ``cls`` cannot audit a user's model under ``spec``, or None when it can."""
    modality = spec.modality
    if cls.is_dynamic():
        return (
            "is a dynamic baseline: it needs run-time traffic, which only `auditgame play` prepares"
        )
    if modality not in cls.modalities:
        return (
            f"examines {', '.join(cls.modalities)} models, not "
            f"{_MODALITY_WORDS.get(modality, modality)}"
        )
    if cls.families is not None:
        return f"examines only the families {', '.join(cls.families)}"
    if cls.reference:
        return (
            "compares the model with its family's base model, which a model from outside a "
            "zoo does not have"
        )
    kind = spec.threat_model.kind
    if not cls.looks_for(kind):
        looks = ", ".join(cls.threats or ())
        return f"looks for {looks} violations, and the spec's threat is {kind}"
    return None


def feature_layer(
    model: nn.Module, spec: ImageClassification | LanguageModel, spec_path: Path
) -> nn.Module | None:
    """The module of ``model`` the spec names as its feature layer (``Subject.features``), or
    its top-level ``features`` module when the spec names none; None for a language model or
    an image model with neither (the auditors that need one then say so)."""
    if not isinstance(spec, ImageClassification):
        return None
    children = dict(model.named_children())
    if spec.feature_layer is None:
        return children.get("features")
    try:
        return model.get_submodule(spec.feature_layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][:20]
        raise SpecFileError(
            f"{spec_path}: feature_layer {spec.feature_layer!r} is not a module of the model; "
            f"its modules include: {', '.join(names) or 'none'}"
        ) from None


def _fit(
    instance: Auditor,
    given: set[str],
    spec: ImageClassification | LanguageModel,
    root: Path,
    notes: list[str],
) -> Auditor:
    """The auditor ready to audit: with its fit on ``fit_family`` when the spec names one,
    else with a fit for no family (``"user"``), which only a fit that needs none survives;
    failing that, rebuilt under its ``without_fit`` parameters (said in ``notes``) unless the
    user gave any of them (``given``), or an error that says how to name ``fit_family``."""
    if not isinstance(instance, FittedAuditor):
        return instance
    if isinstance(spec, ImageClassification) and spec.fit_family is not None:
        _matching_family(spec, spec.fit_family, "fit_family")
        fit_here(instance, spec.fit_family, root)
        return instance
    with tempfile.TemporaryDirectory() as work:
        try:
            instance.load_fitted(instance.fit(USER_FAMILY, Path(work)))
            return instance
        except RegistryError:
            pass
    cls = type(instance)
    fallback = cls.without_fit
    name_it = (
        "name a family your model is trained like (same inputs, labels and recipe) with "
        "fit_family: NAME in the spec"
    )
    if fallback is None or given & set(fallback):
        raise AuditgameError(
            f"{instance.name} learns on a built-in family's shadow zoo before it audits: "
            + name_it
            + ("" if fallback is None else f", or run it with {_words(fallback)}")
        )
    notes.append(
        f"{instance.name}: no fit_family in the spec, so its rule without a fit "
        f"({_words(fallback)}); to calibrate it, {name_it}"
    )
    return _fit(cls(**{**instance.get_params(), **fallback}), given, spec, root, notes)


def _words(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())


def _matching_family(spec: ImageClassification, name: str, field: str) -> Family:
    """The built-in family ``name``, if its inputs and labels are the spec's."""
    try:
        fam: Family = registry.get("family", name)()
    except AuditgameError as exc:
        raise SpecFileError(f"{field}: {exc}") from exc
    shape, labels = list(fam.input_shape), len(fam.classes)
    if fam.modality != "image" or shape != list(spec.input_shape) or labels != len(spec.labels):
        raise SpecFileError(
            f"{field}: {name} has {fam.modality} inputs of shape {shape} and {labels} labels, "
            f"the spec {list(spec.input_shape)} and {len(spec.labels)}"
        )
    return fam


def load_clean(spec: ImageClassification, n_clean: int) -> CleanSplit:
    """The clean samples the spec names, split into the auditor's and the held-out ones."""
    source = spec.clean_data
    if source is None:
        return CleanSplit(None, None, "none given")
    if isinstance(source, CleanDataFamily):
        return _family_clean(spec, source.family, n_clean)
    data = read_samples(source.path, list(spec.input_shape), len(spec.labels))
    order = torch.as_tensor(np.random.default_rng(SPLIT_SEED).permutation(len(data)))
    shuffled = Dataset(data.x[order], data.y[order])
    n_audit = min(n_clean, (len(data) + 1) // 2)
    heldout = Dataset(shuffled.x[n_audit:], shuffled.y[n_audit:])
    return CleanSplit(
        shuffled.take(n_audit),
        heldout if len(heldout) else None,
        f"{source.path}: {n_audit} samples for the auditor, {len(heldout)} held out",
    )


def _family_clean(spec: ImageClassification, name: str, n_clean: int) -> CleanSplit:
    splits = _matching_family(spec, name, "clean_data.family").data()
    return CleanSplit(
        splits.val.take(n_clean),
        splits.test,
        f"family {name}: validation split for the auditor, test split held out",
    )


def read_samples(path: Path, input_shape: list[int], n_labels: int) -> Dataset:
    """Clean samples ``x`` and ``y`` from a safetensors or ``.npz`` file, checked against the
    spec: shape, labels in range, inputs finite and in [0, 1]. Nothing is unpickled."""
    where = f"clean_data.path {path}"
    if not path.is_file():
        raise SpecFileError(f"{where}: file is missing")
    suffix = path.suffix.lower()
    if suffix != ".npz":  # an .npz is a zip like torch.save's, and np.load never unpickles
        refuse_pickle(path)
    if suffix == ".safetensors":
        try:
            check_safetensors_header(path)
        except ZooError as exc:
            raise SpecFileError(f"{where}: {exc.problem}") from exc
        arrays = {k: v for k, v in load_file(str(path)).items()}
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.array(npz[k])) for k in npz.files}
        except (ValueError, OSError) as exc:
            raise SpecFileError(f"{where}: not a readable .npz of plain arrays: {exc}") from exc
    else:
        raise SpecFileError(f"{where}: give a .safetensors (preferred) or .npz file")
    if "x" not in arrays or "y" not in arrays:
        raise SpecFileError(
            f"{where}: needs tensors named x and y, found {', '.join(sorted(arrays)) or 'none'}"
        )
    x, y = arrays["x"], arrays["y"]
    if list(x.shape[1:]) != input_shape or x.shape[0] == 0:
        raise SpecFileError(
            f"{where}: x has shape {list(x.shape)}, expected [N, *input_shape] = "
            f"[N, {', '.join(map(str, input_shape))}] with N > 0"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise SpecFileError(f"{where}: y must hold integer labels, not {y.dtype}")
    if list(y.shape) != [x.shape[0]]:
        raise SpecFileError(f"{where}: y has shape {list(y.shape)}, expected [{x.shape[0]}]")
    if int(y.min()) < 0 or int(y.max()) >= n_labels:
        raise SpecFileError(
            f"{where}: labels run from {int(y.min())} to {int(y.max())}; the spec names "
            f"{n_labels} labels (0 to {n_labels - 1})"
        )
    x = x.float()
    if not torch.isfinite(x).all() or float(x.min()) < 0 or float(x.max()) > 1:
        raise SpecFileError(
            f"{where}: x must be finite and in [0, 1] (found {float(x.min()):g} to "
            f"{float(x.max()):g}); scale the inputs and fold any normalisation into the model"
        )
    return Dataset(x, y.long())


def check_witness(
    card: Card,
    model: torch.nn.Module,
    finding: Finding,
    heldout: Dataset | None,
    interface: object | None = None,
) -> WitnessCheck:
    """Measure the finding's trigger through the card's spec on held-out samples, if any
    (a threat whose witness is a whole input needs none), with the model's own ``interface``
    where it has one (a language model's tokenizer)."""
    spec = card.spec
    if interface is not None:
        spec = spec.model_copy(update={"threat_model": spec.threat_model.bound_to(interface)})
    if finding.trigger is None or (finding.target is None and not spec.untargeted):
        return WitnessCheck(checked=False, note="the auditor named no trigger and target")
    if heldout is None and spec.threat_model.needs_samples:
        return WitnessCheck(
            checked=False, note="no held-out clean samples; set clean_data in the spec"
        )
    x, y = (heldout.x, heldout.y) if heldout is not None else (torch.empty(0), torch.empty(0))
    try:
        check = spec.check_witness(model, finding.trigger, finding.target, x, y)
    except ValueError as exc:
        return WitnessCheck(checked=False, note=f"the witness could not be measured: {exc}")
    return WitnessCheck(
        checked=True,
        asr=check.asr,
        in_threat_model=check.in_threat_model,
        violates=check.violates,
        n_heldout=len(heldout) if heldout is not None else 0,
    )
