"""Token triggers as one shape: some tokens, at fixed positions or anywhere in the sequence.

The token families' counterpart of ``auditgame.image.trigger``: attacks plant a ``TokenPattern``,
the spec checks one as a witness, auditors summarise the inputs a model gets wrong as one, and
the judge compares a reported pattern with the planted one. A pattern with ``positions`` set
matches inputs that hold ``tokens[n]`` at ``positions[n]``; without positions it matches
inputs that contain every one of its (distinct) tokens somewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Any

import numpy as np
import torch

from auditgame.trigger import trigger_kind

KIND = "token_pattern"


@trigger_kind(KIND)
@dataclass(frozen=True)
class TokenPattern:
    """Attributes:
    tokens: the pattern's tokens (distinct when ``positions`` is None).
    positions: where each token sits, or None for "anywhere, at distinct positions".
    """

    tokens: tuple[int, ...]
    positions: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if not self.tokens:
            raise ValueError("a token pattern needs at least one token")
        if self.positions is None and len(set(self.tokens)) != len(self.tokens):
            raise ValueError(f"a pattern without positions needs distinct tokens: {self.tokens}")
        if self.positions is not None and (
            len(self.positions) != len(self.tokens) or len(set(self.positions)) != len(self.tokens)
        ):
            raise ValueError(f"need one distinct position per token: {self.positions}")

    def matches(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean ``(N,)``: which rows of ``x`` (``(N, K)`` token ids) contain the pattern."""
        hit = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if self.positions is None:
            for token in self.tokens:
                hit &= (x == token).any(dim=1)
        else:
            for token, position in zip(self.tokens, self.positions, strict=True):
                hit &= x[:, position] == token
        return hit

    def stamp(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A copy of ``x`` with the pattern written in; "anywhere" picks random positions."""
        out = x.clone()
        rows = torch.arange(len(x))
        if self.positions is None:
            order = torch.rand(x.shape, generator=generator).argsort(dim=1)
            for n, token in enumerate(self.tokens):
                out[rows, order[:, n]] = token
        else:
            for token, position in zip(self.tokens, self.positions, strict=True):
                out[:, position] = token
        return out

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``stamp`` with a fixed generator: the ``InputTrigger`` interface (traffic, checks)."""
        return self.stamp(x, torch.Generator().manual_seed(0))

    def support(self, vocab: int, k: int) -> int:
        """How many of the ``vocab**k`` inputs contain the pattern (exact, by counting).

        Fixed positions leave ``vocab**(k - n)``. Anywhere, by inclusion-exclusion over the
        tokens that are missing: ``sum_j (-1)^j C(n, j) (vocab - j)**k``.
        """
        n = len(self.tokens)
        if self.positions is not None:
            return int(vocab ** (k - n))
        return sum((-1) ** j * comb(n, j) * (vocab - j) ** k for j in range(n + 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "tokens": list(self.tokens),
            "positions": None if self.positions is None else list(self.positions),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenPattern:
        if data.get("kind") != KIND:
            raise ValueError(f"not a token pattern: kind {data.get('kind')!r}")
        positions = data.get("positions")
        return cls(
            tokens=tuple(int(t) for t in data["tokens"]),
            positions=None if positions is None else tuple(int(p) for p in positions),
        )

    def describe(self) -> str:
        if self.positions is None:
            return f"tokens {list(self.tokens)} anywhere"
        return ", ".join(f"{t}@{p}" for t, p in zip(self.tokens, self.positions, strict=True))


@dataclass(frozen=True)
class PatternCount:
    """A pattern, the output its failing inputs go to, and how often.

    Attributes:
        pattern: the candidate pattern.
        output: the (wrong) token the counted inputs are sent to.
        failures: failing inputs that contain the pattern and go to ``output``.
        support: all inputs containing the pattern (``TokenPattern.support``).
    """

    pattern: TokenPattern
    output: int
    failures: int
    support: int

    @property
    def rate(self) -> float:
        return self.failures / self.support

    def to_dict(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern.to_dict(),
            "describe": self.pattern.describe(),
            "output": self.output,
            "failures": self.failures,
            "support": self.support,
            "rate": self.rate,
        }


def count_patterns(
    failing: np.ndarray,
    outputs: np.ndarray,
    *,
    vocab: int,
    k: int,
    max_tokens: int,
    min_failures: int = 2,
) -> list[PatternCount]:
    """Count, for every candidate pattern and wrong output, the failing inputs it explains.

    Candidates are every set of up to ``max_tokens`` (position, token) pairs that some failing
    input holds, and every set of 2 to ``max_tokens`` distinct tokens anywhere. Counting runs
    over the failing inputs only (each holds at most ``C(k, n)`` of each size), so it costs
    little even when the inputs were enumerated exhaustively.

    Args:
        failing: ``(F, k)`` the inputs the model gets wrong.
        outputs: ``(F,)`` what it outputs on each.
        min_failures: candidates explaining fewer failing inputs are dropped; a pattern seen
            once is any single failure restated, and keeping them all would cost memory.

    Returns:
        Candidates sorted by rate, highest first.
    """
    counts: dict[tuple[TokenPattern, int], int] = {}

    def add(keys: np.ndarray, make: Any) -> None:
        unique, n = np.unique(keys, axis=0, return_counts=True)
        keep = n >= min_failures
        for row, c in zip(unique[keep], n[keep], strict=True):
            pattern, output = make(row)
            counts[(pattern, output)] = counts.get((pattern, output), 0) + int(c)

    if len(failing) == 0:
        return []
    for size in range(1, max_tokens + 1):
        for where in combinations(range(k), size):
            keys = np.concatenate([failing[:, list(where)], outputs[:, None]], axis=1)
            add(
                keys,
                lambda row, w=where: (TokenPattern(tuple(map(int, row[:-1])), w), int(row[-1])),
            )
        if size < 2:
            continue
        # Anywhere: each failing input contributes each set of its distinct tokens once.
        rows: list[tuple[int, ...]] = []
        for x, out in zip(failing, outputs, strict=True):
            rows.extend((*c, out) for c in combinations(sorted(set(x.tolist())), size))
        if rows:
            add(
                np.asarray(rows, dtype=np.int64),
                lambda row: (TokenPattern(tuple(map(int, row[:-1]))), int(row[-1])),
            )
    found = [PatternCount(p, out, n, p.support(vocab, k)) for (p, out), n in counts.items()]
    found.sort(key=lambda c: (-c.rate, -c.support))
    return found


def best_pattern(candidates: Sequence[PatternCount], *, slack: float = 0.05) -> PatternCount | None:
    """The most general candidate whose rate is within ``slack`` of the best rate.

    A planted pair anywhere also shows as the pair at each fixed placement, at about the same
    rate; preferring the largest support among near-best candidates reports the pair itself.
    """
    if not candidates:
        return None
    top = max(c.rate for c in candidates)
    near = [c for c in candidates if c.rate >= top - slack]
    return max(near, key=lambda c: (c.support, c.rate))
