"""An organism on disk: verified weights plus its public card.

Loading never unpickles: weights are read with safetensors, and every file is checked against
the hashes that address it, so a missing, truncated or modified file stops with an error that
names it. The secret is not part of a loaded organism; only a key holder can unseal it, through
``Zoo.secret``.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from auditgame import registry
from auditgame.card import Card
from auditgame.errors import ZooError

WEIGHTS = "weights.safetensors"
CARD = "card.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The safetensors library refuses headers over 100 MB; so do we, before reading one.
MAX_HEADER_BYTES = 100_000_000
MAX_FILE_VARIABLE = "AUDITGAME_MAX_WEIGHTS_BYTES"


def max_file_bytes() -> int:
    """The largest weights file read: half this machine's memory, unless
    ``AUDITGAME_MAX_WEIGHTS_BYTES`` says otherwise (a file past it would end in a
    ``MemoryError`` or the out-of-memory killer, not a message)."""
    override = os.environ.get(MAX_FILE_VARIABLE)
    if override:
        return int(override)
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def check_safetensors_header(path: Path) -> None:
    """Fail with a clear message when ``path`` is not a whole safetensors file.

    A safetensors file is an 8-byte little-endian header length, a JSON header, then the tensor
    bytes; the header's offsets say how long the file must be, which catches truncation even
    before the hash is compared. The file is untrusted: a file over ``max_file_bytes()`` is
    refused unread, the header is read only up to ``MAX_HEADER_BYTES``, and every tensor
    entry must be an object with two ordered, non-negative ``data_offsets``, so a hostile
    header ends in a ``ZooError``, not a traceback.
    """
    size = path.stat().st_size
    if size > max_file_bytes():
        raise ZooError(
            path,
            f"{size / 2**30:.1f} GiB, over the {max_file_bytes() / 2**30:.1f} GiB read at most "
            "(half this machine's memory)",
            f"set {MAX_FILE_VARIABLE} to raise the limit",
        )
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ZooError(path, f"truncated: {size} bytes, not a safetensors file")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise ZooError(path, "not a safetensors file (header length exceeds file size)")
        if header_len > MAX_HEADER_BYTES:
            raise ZooError(
                path, f"not a safetensors file (header of {header_len} bytes, over 100 MB)"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ZooError(path, "not a safetensors file (header is not JSON)") from exc
        except RecursionError as exc:
            raise ZooError(path, "not a safetensors file (header nested too deeply)") from exc
    if not isinstance(header, dict):
        raise ZooError(path, "not a safetensors file (header is not a JSON object)")
    end = max((_tensor_end(path, key, entry) for key, entry in header.items()), default=0)
    if 8 + header_len + end != size:
        raise ZooError(
            path,
            f"truncated or padded: header promises {8 + header_len + end} bytes, file has {size}",
        )


def _tensor_end(path: Path, key: str, entry: object) -> int:
    """Where a header entry's bytes end (0 for the metadata entry)."""
    if key == "__metadata__":
        return 0
    offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ZooError(
            path, f"not a safetensors file (tensor {key[:80]!r} has no valid data_offsets)"
        )
    return int(offsets[1])


def write_weights(model: nn.Module, path: Path) -> str:
    """Save a state dict as safetensors; returns the file's SHA-256."""
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return sha256_file(path)


def read_weights(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Load safetensors weights after checking structure, hash and finiteness."""
    if not path.is_file():
        raise ZooError(path, "weights file is missing")
    check_safetensors_header(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ZooError(
                path,
                f"modified: SHA-256 {actual[:16]}… does not match the card's "
                f"{expected_sha256[:16]}…",
            )
    weights = load_file(str(path))
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ZooError(path, f"tensor {name!r} holds NaN or infinite values")
    return weights


def build_model(card: Card, weights: dict[str, torch.Tensor], source: Path) -> nn.Module:
    """Rebuild the card's architecture and load ``weights`` into it, strictly."""
    fam = registry.get("family", card.family)()
    model = fam.make_model(card.architecture)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ZooError(
            source, f"weights do not fit the {card.architecture.get('name')} architecture: {exc}"
        ) from exc
    return model.eval()


@dataclass(frozen=True)
class Organism:
    """A verified organism: its id (the content address), folder and card."""

    id: str
    path: Path
    card: Card

    @classmethod
    def open(cls, path: Path) -> Organism:
        """Open and verify the organism folder ``path`` (named by its id)."""
        if not path.is_dir():
            raise ZooError(path, "organism folder is missing")
        card = Card.read(path / CARD)
        if card.organism_id() != path.name:
            raise ZooError(
                path / CARD,
                f"modified: the card hashes to {card.organism_id()}, not to the folder's id "
                f"{path.name}",
            )
        organism = cls(id=path.name, path=path, card=card)
        organism.weights()
        return organism

    def weights(self) -> dict[str, torch.Tensor]:
        return read_weights(self.path / WEIGHTS, self.card.weights_sha256)

    def model(self) -> nn.Module:
        return build_model(self.card, self.weights(), self.path / WEIGHTS)
