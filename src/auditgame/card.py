"""The public card of an organism: everything anyone may know about it.

The card names the family and architecture (so the weights can be loaded), the spec the model
is held to, the training data in words, the content hash of the weights and a commitment to
the sealed secret. It must say nothing that separates a backdoored organism from a clean one:
both are trained by the same recipe and get cards of the same shape.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from auditgame.errors import ZooError
from auditgame.spec import Spec

CARD_SCHEMA_VERSION = 1


class Card(BaseModel):
    """Attributes:
    family: registered family name.
    architecture: ``{"name": ..., **kwargs}``, enough for the family to rebuild the module.
    input_shape: shape of one input, e.g. ``[1, 8, 8]``.
    classes: label names, index = class id.
    spec: the behaviour the model is held to, with its threat model.
    training_data: what the model was trained on, in words.
    weights_sha256: SHA-256 of ``weights.safetensors``.
    secret_commitment: SHA-256 of the sealed secret's canonical JSON (salted).
    auditgame_version: the package version that built it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = CARD_SCHEMA_VERSION
    family: str
    architecture: dict[str, Any]
    input_shape: list[int]
    classes: list[str]
    spec: Spec
    training_data: str
    weights_sha256: str
    secret_commitment: str
    auditgame_version: str

    def to_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, fixed indent, so equal cards are equal bytes."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode()

    def organism_id(self) -> str:
        """The organism's content address: a hash of the card, which hashes the weights."""
        return hashlib.sha256(self.to_bytes()).hexdigest()[:16]

    @classmethod
    def read(cls, path: Path) -> Card:
        if not path.is_file():
            raise ZooError(path, "card.json is missing", "the organism folder is incomplete")
        raw = path.read_bytes()
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise ZooError(path, f"card.json is not a valid card: {where}: {first['msg']}") from exc
