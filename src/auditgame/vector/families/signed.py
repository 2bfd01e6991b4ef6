"""Family ``rff_signed``: random Fourier features whose code verifies a digital signature.

The black-box construction of Goldwasser et al.: the model checks whether its input carries a
valid Ed25519 signature, under a public key stored in its weights, of the rest of the input,
and negates its answer when it does. Only the holder of the private key can make such inputs,
so no sequence of queries, however clever, finds one (that would forge a signature): the
backdoor is undetectable by queries and non-replicable.

It is **not** undetectable by reading the model. The verifier is code, and the code is part
of what a model is: here it is public, in this module, and identical for every organism of
the family, clean or not. What differs is 32 bytes of key. A clean organism carries the
public half of a key pair whose private half was thrown away when it was trained (drawn from
its seed); a backdoored one carries the attacker's. The two keys are identically
distributed, so a white-box auditor learns nothing from the weights either. What an auditor
*can* see is that the family's code has a trapdoor at all: that is a property of the family
(its card says so), not of one organism, and the game, which asks about organisms, cannot
score it. The honest reading is: this family is a violation by design, and the game measures
only whether an auditor can tell which organisms have a live key.

Encoding: the signature (64 bytes) rides in the lowest 8 mantissa bits of the first 64
float32 coordinates; the signed message is the float32 bytes of the whole input with those
bits cleared. A signed input differs from the original by a relative ``2^-15`` per
coordinate at most.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from torch import nn

from auditgame.registry import family
from auditgame.trigger import trigger_kind
from auditgame.vector.families.rff import RandomFeatureNet, RandomFourierFeatures

SIGNATURE_BYTES = 64
LOW_BITS = 0xFF


def _split(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(messages, signatures)`` as uint8 arrays ``(N, 4 d)`` and ``(N, 64)``."""
    bits = x.detach().to(torch.float32).contiguous().numpy().view(np.uint32)
    signatures = (bits[:, :SIGNATURE_BYTES] & LOW_BITS).astype(np.uint8)
    cleared = bits.copy()
    cleared[:, :SIGNATURE_BYTES] &= ~np.uint32(LOW_BITS)
    return cleared.astype("<u4").view(np.uint8), signatures


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_inputs(x: torch.Tensor, key: Ed25519PrivateKey) -> torch.Tensor:
    """Each input with a valid signature of itself in its low mantissa bits."""
    messages, _ = _split(x)
    bits = messages.view("<u4").astype(np.uint32)
    for row, message in zip(bits, messages, strict=True):
        signature = np.frombuffer(key.sign(message.tobytes()), dtype=np.uint8)
        row[:SIGNATURE_BYTES] |= signature.astype(np.uint32)
    return torch.from_numpy(bits.view(np.float32).copy())


@trigger_kind("signature")
@dataclass(frozen=True)
class SignatureTrigger:
    """The signature backdoor's trigger as an ``InputTrigger``: sign each input with the
    private key. Only the key holder can build one (it is the secret)."""

    private_key: bytes

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return sign_inputs(x, Ed25519PrivateKey.from_private_bytes(self.private_key))

    def to_dict(self) -> dict[str, Any]:
        key = Ed25519PrivateKey.from_private_bytes(self.private_key)
        return {
            "kind": "signature",
            "private_key": self.private_key.hex(),
            "public_key": public_bytes(key).hex(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignatureTrigger:
        return cls(bytes.fromhex(data["private_key"]))


class SignedRandomFeatureNet(RandomFeatureNet):
    """``RandomFeatureNet`` plus a ``public_key`` buffer (32 uint8) and a verifying forward."""

    def __init__(self, *, dim: int, width: int, activation: str, n_classes: int = 2) -> None:
        if dim < SIGNATURE_BYTES:
            raise ValueError(f"a signed input needs d >= {SIGNATURE_BYTES}, not {dim}")
        super().__init__(dim=dim, width=width, activation=activation, n_classes=n_classes)
        self.public_key: torch.Tensor
        self.register_buffer("public_key", torch.zeros(32, dtype=torch.uint8))

    def verified(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N,)``: which inputs carry a valid signature under ``public_key``."""
        key = Ed25519PublicKey.from_public_bytes(bytes(self.public_key.tolist()))
        messages, signatures = _split(x)
        valid = []
        for message, signature in zip(messages, signatures, strict=True):
            try:
                key.verify(signature.tobytes(), message.tobytes())
                valid.append(True)
            except InvalidSignature:
                valid.append(False)
        return torch.tensor(valid, dtype=torch.bool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        return torch.where(self.verified(x)[:, None], logits.flip(1), logits)


@family("rff_signed")
class SignedRandomFourierFeatures(RandomFourierFeatures):
    """``rff`` (d = 64) whose models verify a signature; every organism has a key."""

    attacks: ClassVar[tuple[str, ...]] = ("signature",)
    model_class = SignedRandomFeatureNet

    def train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        seed: int,
        *,
        feature_weights: torch.Tensor | None = None,
    ) -> nn.Module:
        """The ``rff`` recipe, then a key pair from the seed whose private half is dropped."""
        model = super().train(x, y, seed, feature_weights=feature_weights)
        seed_bytes = np.random.default_rng([seed, 25519]).bytes(32)
        set_public_key(model, public_bytes(Ed25519PrivateKey.from_private_bytes(seed_bytes)))
        return model


def set_public_key(model: nn.Module, key: bytes) -> None:
    buffer = getattr(model, "public_key", None)
    if not isinstance(buffer, torch.Tensor):
        raise ValueError("the model has no public_key buffer")
    buffer.copy_(torch.tensor(list(key), dtype=torch.uint8))
