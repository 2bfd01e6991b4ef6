"""Loading a model someone brings from outside a zoo, as untrusted input.

Weights are read with safetensors only. A pickle (``torch.save``'s zip or a bare pickle
stream, or a file named like one: ``.pt``, ``.pth``, ``.bin``, ...) is refused before it is
opened, since unpickling runs whatever code the file names. The architecture is the user's
own ``nn.Module`` class (``module:Class``), built with the spec's keyword arguments and
loaded strictly: every missing or unexpected key and every wrong shape is reported. A Hugging
Face folder is loaded with ``transformers`` from its ``*.safetensors`` files only, and never
with the folder's own code (``trust_remote_code`` stays off); its violation kind then makes
it ready for its auditors (``ViolationKind.user_model``: a language model's tokenizer is read
from ``tokenizer.json`` only).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from auditgame.errors import AuditgameError, ZooError
from auditgame.organism import check_safetensors_header, read_weights, sha256_file

PICKLE_SUFFIXES = frozenset({".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt", ".joblib"})
CONVERT_HINT = (
    "convert it once, where you trust the file: "
    "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
)
_SHOWN = 3


class ModelFileError(AuditgameError):
    """The user's model cannot be loaded: the message names the file or class, what is wrong
    and how to fix it."""

    def __init__(self, path: Path | str, problem: str, hint: str = "") -> None:
        message = f"{path}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


@dataclass(frozen=True)
class LoadedModel:
    """A verified model in eval mode.

    Attributes:
        model: the module, its weights loaded strictly and finite.
        weights_sha256: SHA-256 of the weights file (of the per-file hashes, for a folder).
        architecture: what a card records to rebuild it (``{"name": ..., **kwargs}``).
    """

    model: nn.Module
    weights_sha256: str
    architecture: dict[str, Any]


def looks_like_pickle(path: Path) -> bool:
    """Whether ``path`` is named or shaped like a pickle; reads 8 bytes, unpickles nothing.

    ``torch.save`` writes a zip archive (``PK\\x03\\x04``) or, in its legacy format, a bare
    pickle stream (``\\x80`` then the protocol, 2 to 5). A safetensors file can begin with
    the same two bytes (its header length), so the magic counts only when the file is not a
    whole safetensors file.
    """
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(b"PK\x03\x04"):
        return True
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        try:
            check_safetensors_header(path)
        except ZooError:
            return True
    return False


def refuse_pickle(path: Path) -> None:
    if looks_like_pickle(path):
        raise ModelFileError(
            path,
            "looks like a pickle (torch.save) file; auditgame never unpickles model files, "
            "since loading a pickle runs code the file names",
            CONVERT_HINT,
        )


def read_user_weights(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """A user's safetensors weights and their SHA-256, after the pickle, structure and
    finiteness checks."""
    if not path.exists():
        raise ModelFileError(path, "model file is missing")
    if path.is_dir():
        raise ModelFileError(
            path, "is a folder", "give the .safetensors file, or --hf for a Hugging Face folder"
        )
    refuse_pickle(path)
    try:
        weights = read_weights(path)
    except ZooError as exc:
        raise ModelFileError(path, exc.problem, "save the weights with safetensors") from exc
    return weights, sha256_file(path)


def import_architecture(arch: str) -> type[nn.Module]:
    """The ``nn.Module`` class named ``module:Class``; the current folder is importable too."""
    module_name, sep, attr = arch.partition(":")
    if not sep or not module_name or not attr:
        raise ModelFileError(
            f"--arch {arch}", "takes MODULE:CLASS", "e.g. --arch my_models.net:Net"
        )
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelFileError(
            f"--arch {arch}",
            f"cannot import {module_name!r}: {exc}",
            "run from the folder that holds it, or add that folder to PYTHONPATH",
        ) from exc
    except Exception as exc:
        raise ModelFileError(
            f"--arch {arch}", f"importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            classes = sorted(
                name
                for name, value in vars(module).items()
                if isinstance(value, type) and issubclass(value, nn.Module)
            )
            raise ModelFileError(
                f"--arch {arch}",
                f"module {module_name!r} has no {attr!r}",
                f"its nn.Module classes: {', '.join(classes) or 'none'}",
            )
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ModelFileError(f"--arch {arch}", f"is a {type(obj).__name__}, not an nn.Module class")
    return obj


def check_fit(model: nn.Module, weights: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Fail, listing a few of each, when ``weights`` has missing or unexpected keys or a
    tensor of the wrong shape for ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k}: file {list(weights[k].shape)} vs model {list(expected[k].shape)}"
        for k in sorted(set(expected) & set(weights))
        if weights[k].shape != expected[k].shape
    ]
    problems = [
        f"{len(items)} {label} ({_few(items)})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", wrong),
        )
        if items
    ]
    if problems:
        raise ModelFileError(
            path,
            f"weights do not fit {what}: {'; '.join(problems)}",
            "check --arch and architecture.kwargs in the spec",
        )


def _few(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")


def load_arch_model(path: Path, arch: str, kwargs: dict[str, Any]) -> LoadedModel:
    """Build ``arch(**kwargs)`` and load the safetensors file ``path`` into it strictly."""
    weights, digest = read_user_weights(path)
    cls = import_architecture(arch)
    try:
        model = cls(**kwargs)
    except Exception as exc:
        raise ModelFileError(
            f"--arch {arch}",
            f"{cls.__name__}(**{kwargs}) failed: {type(exc).__name__}: {exc}",
            "set its constructor arguments under architecture.kwargs in the spec",
        ) from exc
    check_fit(model, weights, f"{arch}(**{kwargs})", path)
    model.load_state_dict(weights, strict=True)
    return LoadedModel(model.eval(), digest, {"name": arch, **kwargs})


def check_outputs(model: nn.Module, input_shape: list[int], n_labels: int) -> None:
    """Run a batch of two inputs of the spec's shape and check there is one logit per label."""
    shape = [2, *input_shape]
    try:
        with torch.no_grad():
            logits = model(torch.full(shape, 0.5))
    except Exception as exc:
        raise ModelFileError(
            "the model",
            f"fails on inputs of shape {shape}: {type(exc).__name__}: {exc}",
            "check input_shape in the spec",
        ) from exc
    if not isinstance(logits, torch.Tensor) or list(logits.shape) != [2, n_labels]:
        got = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ModelFileError(
            "the model",
            f"returns {got} for inputs of shape {shape}, not [2, {n_labels}] (one logit per label)",
            "check labels in the spec; the model must return a logits tensor",
        )


def load_hf_model(folder: Path) -> LoadedModel:
    """A causal language model from a Hugging Face folder, from its safetensors only."""
    if not folder.exists():
        raise ModelFileError(folder, "model folder is missing")
    if not folder.is_dir():
        raise ModelFileError(folder, "--hf takes a folder with config.json and *.safetensors")
    if not (folder / "config.json").is_file():
        raise ModelFileError(folder, "no config.json", "save the model with save_pretrained")
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ModelFileError(
                folder,
                f"holds only pickle weights ({_few(pickles)}); auditgame never "
                "unpickles model files",
                "convert once, where you trust them: "
                "model.save_pretrained(folder, safe_serialization=True)",
            )
        raise ModelFileError(folder, "no *.safetensors weights")
    digest = hashlib.sha256()
    for shard in shards:
        try:
            check_safetensors_header(shard)
        except ZooError as exc:
            raise ModelFileError(shard, exc.problem) from exc
        digest.update(f"{shard.name}:{sha256_file(shard)}\n".encode())
    if importlib.util.find_spec("transformers") is None:
        raise ModelFileError(
            folder,
            "loading a Hugging Face folder needs transformers, which is not installed",
            "pip install transformers",
        )
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder),
            use_safetensors=True,
            trust_remote_code=False,
            local_files_only=True,
            dtype=torch.float32,
        )
    except Exception as exc:
        raise ModelFileError(
            folder, f"transformers could not load it: {type(exc).__name__}: {exc}"
        ) from exc
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelFileError(folder, f"tensor {name!r} holds NaN or infinite values")
    config = model.config
    architecture = {"name": type(model).__name__, "vocab_size": int(config.vocab_size)}
    return LoadedModel(model.eval(), digest.hexdigest(), architecture)
