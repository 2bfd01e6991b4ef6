"""The spec file of a model that is not in a zoo: what the user states about their own model.

An organism of a zoo carries a card written by the family that trained it. A model someone
brings from outside has no family, so the user states in a YAML file what a card would say
and what the audit needs: the kind of task, the input shape and label names (or the
vocabulary), the threat model and the threshold tau (the same ``ThreatModel`` union and
``Spec`` that judge zoo organisms), where clean samples come from, and which auditors to run.

The file is validated by pydantic with unknown keys refused, so a typo stops the command
instead of silently falling back to a default; ``json_schema`` gives the same rules to
editors (``docs/spec.schema.json``). YAML is read with a safe loader only: a spec file
cannot construct Python objects, and since it is untrusted input it is also refused when it is
over 1 MiB, uses aliases (``*name``, the "billion laughs" expansion that hung ``auditgame
audit`` at 3 GB) or nests deeper than 32 levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from auditgame import registry
from auditgame.errors import AuditgameError
from auditgame.spec import AnyThreatModel, Spec
from auditgame.violation import kind_of

SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
MAX_SPEC_BYTES = 1 << 20
MAX_SPEC_DEPTH = 32
_STRICT = ConfigDict(frozen=True, extra="forbid")


class SpecFileError(AuditgameError):
    """The spec file is missing, is not YAML, or does not validate; the message names the
    file, the field path and what to write instead."""


class CleanDataFile(BaseModel):
    """Clean labelled samples the user provides.

    Attributes:
        path: a ``.safetensors`` file (preferred) or an ``.npz`` file holding ``x``
            (``N x input_shape``, floats in [0, 1]) and ``y`` (``N`` integer labels);
            relative paths are read from the spec file's folder. Never a pickle.
    """

    model_config = _STRICT

    path: Path


class CleanDataFamily(BaseModel):
    """Clean samples of a built-in family whose task matches the model's (same input shape
    and number of labels): its validation split goes to the auditor, its test split checks
    the witness.

    Attributes:
        family: a registered family name, e.g. ``digits``.
    """

    model_config = _STRICT

    family: str


class AuditorChoice(BaseModel):
    """An auditor to run, with constructor parameters (``auditgame list auditors``)."""

    model_config = _STRICT

    name: str
    params: dict[str, Any] = {}


class Architecture(BaseModel):
    """How to build the class named by ``--arch``.

    Attributes:
        kwargs: keyword arguments of its constructor.
    """

    model_config = _STRICT

    kwargs: dict[str, Any] = {}


class _TaskSpec(BaseModel):
    """Fields every task shares. ``auditors`` entries are names or ``{name, params}``."""

    model_config = _STRICT

    behaviour: str = Field(min_length=1)
    threat_model: AnyThreatModel
    tau: float = Field(default=0.5, gt=0, le=1)
    training_data: str = "not stated"
    auditors: list[str | AuditorChoice] = []

    @property
    def spec(self) -> Spec:
        """The ``Spec`` a zoo organism's card would carry: it checks witnesses."""
        return Spec(behaviour=self.behaviour, threat_model=self.threat_model, tau=self.tau)

    def auditor_choices(self) -> list[AuditorChoice]:
        return [AuditorChoice(name=a) if isinstance(a, str) else a for a in self.auditors]


class ImageClassification(_TaskSpec):
    """An image classifier loaded from safetensors weights and an ``nn.Module`` class
    (``--arch``). It takes ``(N, C, H, W)`` floats in [0, 1] and returns ``(N, len(labels))``
    logits.

    Attributes:
        input_shape: ``[C, H, W]`` of one input.
        labels: class names; index = class id.
        architecture: constructor arguments for the ``--arch`` class.
        clean_data: where clean labelled samples come from (needed by auditors with
            ``CLEAN_DATA`` access, and to check a witness).
        feature_layer: the dotted name of the module whose output is the model's inner
            representation (``features``, ``backbone.layer4``), for the auditors that read or
            stimulate activations (ABS, the dynamic baselines); without it, the model's
            top-level module named ``features`` if it has one.
        fit_family: the built-in family on whose shadow zoo auditors with a fitting stage
            learn (``auditgame.fitting``); name one only if the model is trained like that
            family's models. Without it such auditors run only if their fit needs no family.
        auditors: default Neural Cleanse with the paper's anomaly-index rule
            (``calibrate: false``): its calibrated rule needs reference models trained like
            the audited one.
    """

    task: Literal["image_classification"]
    input_shape: list[Annotated[int, Field(gt=0)]] = Field(min_length=3, max_length=3)
    labels: list[str] = Field(min_length=2)
    architecture: Architecture = Architecture()
    clean_data: CleanDataFile | CleanDataFamily | None = None
    feature_layer: str | None = Field(default=None, min_length=1, max_length=200)
    fit_family: str | None = None
    auditors: list[str | AuditorChoice] = [
        AuditorChoice(name="neural_cleanse", params={"calibrate": False})
    ]

    modality: ClassVar[str] = "image"

    @model_validator(mode="after")
    def _fits_images(self) -> ImageClassification:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be distinct")
        if self.modality not in kind_of(self.threat_model.kind).modalities:
            fitting = [
                n for n in registry.names("violation") if self.modality in kind_of(n).modalities
            ]
            raise ValueError(
                f"an image classifier's threat model is {' or '.join(fitting)}, not "
                f"{self.threat_model.kind}"
            )
        return self


class LanguageModel(_TaskSpec):
    """A causal language model in a Hugging Face folder (``--hf``), with its tokenizer's
    ``tokenizer.json`` beside the weights.

    Attributes:
        vocab_size: checked against the model's config when given.
        prompt_prefix: text every prompt starts with, as the model is prompted in use (a chat
            template's opening, ``"<|im_start|>user\n"``); its added tokens written as text
            are read as themselves. Empty: prompts start bare.
        auditors: empty means every installed auditor for language models that looks for
            the spec's kind of violation.
    """

    task: Literal["language_model"]
    vocab_size: int | None = Field(default=None, gt=1)
    prompt_prefix: str = ""

    modality: ClassVar[str] = "text"


UserSpec = Annotated[ImageClassification | LanguageModel, Field(discriminator="task")]
_ADAPTER: TypeAdapter[ImageClassification | LanguageModel] = TypeAdapter(UserSpec)


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader without aliases and with a depth limit, checked as nodes are composed
    (before anything is expanded or built)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a spec file")
        self.depth += 1
        try:
            if self.depth > MAX_SPEC_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {MAX_SPEC_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_spec(path: Path) -> ImageClassification | LanguageModel:
    """Read and validate a spec file; a relative ``clean_data.path`` becomes relative to it."""
    if not path.is_file():
        raise SpecFileError(f"{path}: spec file is missing")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecFileError(f"{path}: a spec file is at most 1 MiB; this one is larger")
    try:
        raw = yaml.load(path.read_text(), Loader=_BoundedLoader)  # a SafeLoader
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise SpecFileError(
            f"{path}: a spec file is a YAML mapping (task, behaviour, threat_model, ...); "
            "see docs/audit-your-model.md"
        )
    if "task" not in raw:
        raise SpecFileError(f"{path}: task: missing; write image_classification or language_model")
    try:
        spec = _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        raise SpecFileError(f"{path}: not a valid spec: {_describe(exc)}") from exc
    if (
        isinstance(spec, ImageClassification)
        and isinstance(spec.clean_data, CleanDataFile)
        and not spec.clean_data.path.is_absolute()
    ):
        located = CleanDataFile(path=path.parent / spec.clean_data.path)
        spec = spec.model_copy(update={"clean_data": located})
    return spec


def _describe(exc: ValidationError, most: int = 3) -> str:
    """The first few errors as ``field.path: message``, joined on one line."""
    errors = exc.errors()
    parts = [
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in errors[:most]
    ]
    more = f" (and {len(errors) - most} more)" if len(errors) > most else ""
    return "; ".join(parts) + more


def json_schema() -> dict[str, Any]:
    """The JSON schema of a spec file (committed as ``docs/spec.schema.json``). A threat
    model is one of the registered violation kinds' (``auditgame.violation``), told apart by
    its ``kind``; the built-ins are listed, and an installed plugin's kind with them."""
    schema = _ADAPTER.json_schema()
    threats = [kind_of(name).threat for name in registry.names("violation")]
    union: Any = Annotated[Union[tuple(threats)], Field(discriminator="kind")]  # noqa: UP007
    either = TypeAdapter(union).json_schema()
    defs = schema.setdefault("$defs", {})
    defs.update(either.pop("$defs", {}))
    defs["ThreatModel"] = either
    return {"$schema": SCHEMA_DRAFT, "title": "auditgame spec file", **schema}


def write_json_schema(path: Path) -> None:
    """Write ``json_schema()`` to ``path``. The committed file is regenerated with::

    python -c "import auditgame.user.spec as u; u.write_json_schema('docs/spec.schema.json')"
    """
    Path(path).write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
