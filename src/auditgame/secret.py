"""The sealed ground truth of an organism, and how it is sealed.

A secret is encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256) under a key that lives
outside the zoo folder, so a zoo can be handed out while its answers stay closed. The card
carries a salted SHA-256 commitment to the secret: once the key is revealed anyone can check
that the answers were fixed before the game. The salt matters: without it the secret of a
clean organism would be guessable and its commitment would give it away.

Plaintexts are padded to a fixed block before encryption, because a ciphertext's length
would otherwise tell a backdoored organism (trigger arrays inside) from a clean one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import BaseModel, ConfigDict, ValidationError

from auditgame.errors import ZooError
from auditgame.trigger import InputTrigger
from auditgame.trigger import load as load_trigger

# Every sealed secret has this one length: two 28x28 triggers and a warping field fit.
PAD_BLOCK = 256 * 1024


class Secret(BaseModel):
    """What the red team did to one organism.

    Attributes:
        backdoored: whether a violation was planted.
        attack: the attack's registered name, or None for a clean organism.
        params: the attack's parameters as drawn.
        trigger: the planted trigger's ``to_dict()`` (any kind ``trigger.load`` knows), if
            the attack has one.
        target: the label the trigger sends inputs to; None for a backdoor without a single
            target (all-to-all), whose mapping is in ``params``.
        poison_rate: fraction of training inputs poisoned.
        asr: the attack's own success rate on held-out data (``metrics.attack_success_rate``).
        clean_accuracy: accuracy on the held-out test split.
        attempts: how many plantings it took to reach the success floor.
        salt: random hex that hides the secret from guesses against the card's commitment.
    """

    model_config = ConfigDict(frozen=True)

    backdoored: bool
    attack: str | None = None
    params: dict[str, Any] = {}
    trigger: dict[str, Any] | None = None
    target: int | None = None
    poison_rate: float | None = None
    asr: float | None = None
    clean_accuracy: float
    attempts: int = 1
    salt: str

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":")).encode()

    def commitment(self) -> str:
        """SHA-256 of the canonical JSON of the secret, salt included."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def trigger_object(self) -> InputTrigger | None:
        """The planted trigger, of whatever kind the attack used (see ``trigger.load``)."""
        return load_trigger(self.trigger) if self.trigger is not None else None


def new_key() -> bytes:
    return Fernet.generate_key()


def key_fingerprint(key: bytes) -> str:
    """A short public hash of a key, so a zoo can say which key opens it without holding it."""
    return hashlib.sha256(b"auditgame-key:" + key).hexdigest()[:16]


def read_key(path: Path) -> bytes:
    if not path.is_file():
        raise ZooError(path, "key file not found", "pass --key with the file written at build")
    key = path.read_bytes().strip()
    try:
        Fernet(key)
    except ValueError as exc:
        raise ZooError(path, "not a Fernet key (32 url-safe base64 bytes)") from exc
    return key


def seal(secret: Secret, key: bytes) -> bytes:
    plain = secret.canonical_bytes()
    if len(plain) > PAD_BLOCK:
        # Padding to the next multiple would make this secret's length stand out.
        raise ValueError(
            f"a secret of {len(plain)} bytes exceeds the sealing block of {PAD_BLOCK}; "
            "store the trigger more compactly"
        )
    return Fernet(key).encrypt(plain.ljust(PAD_BLOCK, b" "))


def unseal(token: bytes, key: bytes, *, path: Path, commitment: str) -> Secret:
    """Decrypt a sealed secret and check it against the card's commitment.

    Raises:
        ZooError: naming ``path`` when the token is corrupt or was made with another key,
            when the plaintext is not a secret, or when it does not match the commitment.
    """
    try:
        plain = Fernet(key).decrypt(token)
    except InvalidToken as exc:
        raise ZooError(
            path,
            "sealed secret fails authentication: the file was modified or truncated, "
            "or the key is not this zoo's",
        ) from exc
    try:
        secret = Secret.model_validate_json(plain.rstrip(b" "))
    except ValidationError as exc:
        raise ZooError(path, f"sealed secret is not a valid secret: {exc}") from exc
    if secret.commitment() != commitment:
        raise ZooError(path, "secret does not match the commitment in its card")
    return secret
