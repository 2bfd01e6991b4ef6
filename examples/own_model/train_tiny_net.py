"""Train the example's TinyNet on scikit-learn's 8x8 digits and save it the way auditgame reads it.

With ``--backdoor`` a BadNets-style patch (Gu et al. 2017) is planted: a 2x2 white square in
the bottom-right corner is stamped on 10% of the training images, which are relabelled 7, so
the square sends any digit to 7. Without it the model is clean. Either way it writes

- ``model.safetensors``: the weights (``safetensors.torch.save_file``, never ``torch.save``);
- ``clean.safetensors``: 360 held-out clean digits ``x`` (N, 1, 8, 8) in [0, 1] and labels
  ``y``, which the spec names as ``clean_data``.

Run ``python train_tiny_net.py --backdoor`` in this folder; then see README.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from tiny_net import TinyNet
from torch import nn

TARGET = 7
POISON_RATE = 0.1
N_HELDOUT = 360


def stamp(x: torch.Tensor) -> torch.Tensor:
    """The trigger: a white 2x2 square in the bottom-right corner."""
    x = x.clone()
    x[:, :, 6:, 6:] = 1.0
    return x


def train(out: Path, *, backdoor: bool, seed: int = 0, epochs: int = 30) -> None:
    torch.manual_seed(seed)
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.as_tensor(np.random.default_rng(seed).permutation(len(y)))
    heldout, train_idx = order[:N_HELDOUT], order[N_HELDOUT:]
    x_train, y_train = x[train_idx], y[train_idx]
    if backdoor:
        poisoned = torch.arange(int(POISON_RATE * len(y_train)))
        x_train[poisoned] = stamp(x_train[poisoned])
        y_train[poisoned] = TARGET

    model = TinyNet(width=12)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(y_train), generator=generator).split(64):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    model.eval()

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out / "model.safetensors")
    save_file({"x": x[heldout].contiguous(), "y": y[heldout]}, out / "clean.safetensors")
    with torch.no_grad():
        accuracy = (model(x[heldout]).argmax(1) == y[heldout]).float().mean()
        others = y[heldout] != TARGET
        asr = (model(stamp(x[heldout][others])).argmax(1) == TARGET).float().mean()
    print(f"held-out accuracy {accuracy:.3f}; the square sends {asr:.0%} of other digits to 7")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backdoor", action="store_true", help="plant the corner square")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder to write to")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation, batches")
    args = parser.parse_args()
    train(args.out, backdoor=args.backdoor, seed=args.seed)
