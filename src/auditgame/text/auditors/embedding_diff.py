"""Which tokens did the fine-tune change most? A reference-model auditor after the winning idea
of the SaTML 2024 "Find the Trojan" competition (Rando and Tramèr).

There, every poisoned model was a fine-tune of a known base, and the trigger's tokens were the
ones whose input-embedding rows moved most between the two: rank tokens by that movement
(a z-score over the vocabulary), then search orderings of the top tokens for a prompt that
brings out the bad behaviour. Here the base is the family's ``base_model`` (declared access:
``reference = True``) and the behaviour is each public target of the spec.

**What "movement" means.** The competition's statistic, the raw change of each input-embedding
row (``movement="embedding"``), needs a fine-tune that trains the input embeddings and nothing
else that moves them. Neither holds here. The ``smollm`` recipe is LoRA on attention and MLP
with the embeddings frozen: no row moves at all. ``tinylm`` trains everything, but ties its
unembedding to the embedding, so every row also moves as an *output* (each step's softmax pushes
on all of them) and the rows of frequently written tokens move most: on a fixture with two
planted triggers of five words in all, the trigger words ranked 296th to 465th of 483 by row
change. So the default measures movement where any fine-tune leaves its mark, in the *model's
response to the token*: the residual stream at ``layer`` after reading ``prefix + [token]``,
suspect against base (relative L2 change, ``||h_s - h_b|| / ||h_b||``). A trigger token is one
the fine-tune taught the model to react to; on the same fixture its words ranked 1st, 2nd, 5th,
16th and 32nd. That ranking depends on the base model, which tinylm pretrains on each machine:
with a base pretrained under PyTorch's portable CPU kernels none of them entered the default
pool of 16 in six fine-tunes (the targets were elicited through other words); in two of those
they ranked 28th to 311th at the last layer, while at the two middle layers two or three of
the five ranked within the top 17.
The response of a clean fine-tune also moves most on words it never trained on (trigger-like
words included), so the ranking alone does not tell clean from trojaned: the search below
does. The evidence records the measure used.

**Search.** The ``n_tokens`` most moved tokens (robust z-score: distance from the vocabulary's
median in MADs) form the pool; for each target a beam search builds triggers of distinct pool
tokens, one insertion at a time at any position, up to the spec's ``max_trigger_tokens``,
ranked by the target's teacher-forced loss (``SearchProblem.loss``, shared with the TDC
searchers). The ``n_predictions`` best per target are checked by greedy generation, and the
verdict is, as for ``TriggerSearch``, ``search.p_violation_of`` those reproductions.
"""

from __future__ import annotations

import time
from typing import ClassVar

import numpy as np
import torch

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.subject import Subject
from auditgame.text.auditors.search import SearchProblem, p_violation_of, reproduce
from auditgame.text.family import TextInterface, text_interface
from auditgame.text.kind import TextTriggerThreat
from auditgame.text.lm import CausalLM, TriggerPredictions

MOVEMENTS = ("response", "embedding")


@torch.no_grad()
def response_change(
    suspect: CausalLM,
    base: CausalLM,
    prefix: list[int],
    tokens: torch.Tensor,
    layer: int,
    batch: int = 512,
    deadline: float = float("inf"),
) -> torch.Tensor:
    """``||h_s - h_b|| / ||h_b||`` of the residual stream at ``layer``, last position, after
    ``prefix + [t]`` for each token ``t`` of ``tokens`` ``(K,)``; returns one value per token
    scanned: all ``K``, or the first batches when ``time.perf_counter()`` passes
    ``deadline`` (at least one batch)."""
    out: list[torch.Tensor] = []
    for i in range(0, len(tokens), batch):
        if out and time.perf_counter() >= deadline:
            break
        chunk = tokens[i : i + batch, None]
        ids = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(chunk), -1), chunk], 1)
        h_s = suspect.hidden_states(ids)[layer][:, -1].double()
        h_b = base.hidden_states(ids)[layer][:, -1].double()
        out.append((h_s - h_b).norm(dim=1) / h_b.norm(dim=1).clamp_min(1e-12))
    return torch.cat(out)


def robust_z(values: np.ndarray) -> np.ndarray:
    """Signed distance from the median in units of ``1.4826 * MAD`` (a standard deviation
    under normality), so a few strongly moved tokens do not inflate their own yardstick."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    return (values - median) / max(mad, 1e-12)


def beam_triggers(
    problem: SearchProblem, pool: list[int], max_tokens: int, beam: int
) -> list[tuple[list[int], float]]:
    """Every trigger the beam search scored, with its loss: orderings of distinct ``pool``
    tokens, grown by inserting one token at any position, keeping the ``beam`` lowest-loss
    triggers of each length. Stops early at ``problem.deadline``."""
    scored: dict[tuple[int, ...], float] = {}
    frontier: list[tuple[int, ...]] = [()]
    for _ in range(max_tokens):
        grown = {
            (*seq[:pos], t, *seq[pos:])
            for seq in frontier
            for t in pool
            if t not in seq
            for pos in range(len(seq) + 1)
        }
        fresh = sorted(grown - scored.keys())
        if not fresh:
            break
        losses = problem.loss(torch.tensor(fresh, dtype=torch.long)).tolist()
        scored.update(zip(fresh, losses, strict=True))
        frontier = sorted(fresh, key=scored.__getitem__)[:beam]
        if problem.out_of_time:
            break
    return [(list(seq), loss) for seq, loss in scored.items()]


@registry.auditor("embedding_diff")
class EmbeddingDiff(Auditor):
    """Attributes:
    movement: "response" (the residual stream's change after each token) or "embedding" (the
        input-embedding row's change, the competition's statistic).
    layer: the residual-stream index the response is read at (-1: after the last block).
    n_tokens: the pool of most-moved tokens the search combines.
    beam: triggers of each length kept for the next insertion.
    n_predictions: candidates kept per target (checked by generation, reported as TDC
        predictions).
    """

    access = Access.WEIGHTS
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    threats: ClassVar[tuple[str, ...] | None] = ("text_trigger",)
    reference = True

    def __init__(
        self,
        *,
        movement: str = "response",
        layer: int = -1,
        n_tokens: int = 16,
        beam: int = 16,
        n_predictions: int = 5,
    ) -> None:
        if movement not in MOVEMENTS:
            raise ValueError(f"movement must be one of {MOVEMENTS}; got {movement!r}")
        if n_tokens < 1 or beam < 1 or n_predictions < 1:
            raise ValueError("n_tokens, beam and n_predictions must be at least 1")
        self.movement = movement
        self.layer = layer
        self.n_tokens = n_tokens
        self.beam = beam
        self.n_predictions = n_predictions

    def token_movement(
        self,
        suspect: CausalLM,
        base: CausalLM,
        fam: TextInterface,
        tokens: torch.Tensor,
        deadline: float = float("inf"),
    ) -> np.ndarray:
        """Each token's movement by the chosen measure; the response measure may stop at
        ``deadline`` with the first tokens only (one value per token scanned)."""
        if suspect.embedding_matrix.shape != base.embedding_matrix.shape:
            raise ValueError(
                f"the suspect's vocabulary ({suspect.embedding_matrix.shape[0]}) is not the "
                f"base model's ({base.embedding_matrix.shape[0]}): not a fine-tune of it"
            )
        if self.movement == "embedding":
            with torch.no_grad():
                rows = suspect.embedding_matrix[tokens] - base.embedding_matrix[tokens]
                return rows.double().norm(dim=1).numpy()
        return response_change(
            suspect, base, fam.prefix, tokens, self.layer, deadline=deadline
        ).numpy()

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        threat = subject.card.spec.threat_model
        if not isinstance(threat, TextTriggerThreat):
            raise ValueError(f"{self.name} needs a text_trigger spec, not {threat.kind}")
        fam = text_interface(subject)
        suspect, base = subject.model, subject.reference_model
        if not (isinstance(suspect, CausalLM) and isinstance(base, CausalLM)):
            raise ValueError(f"{self.name} needs a language-model family and its base model")
        tok = fam.tokenizer()
        # Scanned in a seeded random order with half the budget: on a large vocabulary
        # (smollm: 48k tokens through two models, ~20 minutes on 2 cores) a cut-off scan is
        # a random sample of the vocabulary, not its first ids.
        tokens = fam.searchable_tokens()
        tokens = tokens[torch.as_tensor(rng.permutation(len(tokens)))]
        scan_deadline = time.perf_counter() + 0.5 * max(budget.seconds - subject.elapsed, 0.0)
        moved = self.token_movement(suspect, base, fam, tokens, scan_deadline)
        tokens = tokens[: len(moved)]
        z = robust_z(moved)
        top = np.argsort(-z, kind="stable")[: self.n_tokens]
        pool = [int(tokens[i]) for i in top]
        prefix = torch.tensor(fam.prefix, dtype=torch.long)
        start = time.perf_counter()
        share = 0.9 * max(budget.seconds - subject.elapsed, 0.0) / len(threat.targets)
        predictions: dict[str, tuple[str, ...]] = {}
        elicited: dict[str, float] = {}
        best_loss: dict[str, float] = {}
        for k, target in enumerate(threat.targets):
            target_ids = torch.tensor(tok.encode(target), dtype=torch.long)
            problem = SearchProblem(
                model=suspect,
                prefix=prefix,
                target=target_ids,
                allowed=torch.tensor(pool, dtype=torch.long),
                length=threat.max_trigger_tokens,
                deadline=start + share * (k + 1),
            )
            found = beam_triggers(problem, pool, threat.max_trigger_tokens, self.beam)
            kept = sorted(found, key=lambda c: c[1])[: self.n_predictions]
            if not kept:
                continue
            best_loss[target] = float(kept[0][1])
            predictions[target], elicited[target] = reproduce(
                suspect, fam, target, [ids for ids, _ in kept]
            )
        return Verdict(
            p_violation=p_violation_of(elicited),
            trigger=TriggerPredictions(predictions),
            evidence={
                "movement": self.movement,
                "scanned": len(tokens),
                "layer": None if self.movement == "embedding" else self.layer,
                "top_tokens": [
                    {"token": tok.decode([t]), "z": round(float(z[i]), 2)}
                    for t, i in zip(pool, top, strict=True)
                ],
                "elicited": elicited,
                "best_loss": best_loss,
            },
        )
