"""Mahalanobis density of last-token activations (after Lee et al. 2018), a dynamic baseline
for language models.

The text counterpart of ``mahalanobis``: one Gaussian (a language model's prompts have no
class) fitted to the clean samples' last-token residual-stream activations, with Ledoit-Wolf
shrinkage of the covariance (a few dozen prompts against hundreds of dimensions). A run-time
prompt is scored by its Mahalanobis distance from it; the verdict is the shared exceedance
test (``scoring.decide``) against clean samples scored out of fold, by the same fold
estimates as the run-time prompts.

It knows nothing of the trigger or the model's reaction: any prompt unlike the clean ones
scores high. A clean organism's traffic carries decoy phrases in the same share as a trojaned
one's triggers, so this baseline is expected to flag both; its false positive rate on clean
organisms is the number to read (``tests/test_text_reference_dynamic.py`` measures it).
"""

from __future__ import annotations

import numpy as np

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.auditors.dynamic.scoring import cross_folds, decide
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.auditors.dynamic.text_probe import last_token_states
from auditgame.text.family import text_interface
from auditgame.text.lm import CausalLM, unpack


@auditor("text_mahalanobis")
class TextMahalanobis(Auditor):
    """Attributes:
    layer: the residual-stream index (0: embeddings; -1, the default: after the last block,
        where triggered prompts stood out most on tinylm; None: the middle of the stack).
    n_folds: folds over the clean samples: each is scored by a Gaussian fitted on the others,
        and so is each run-time prompt (by a random fold's Gaussian).
    frr: the clean false rejection rate that sets the score cutoff (``scoring.decide``);
        0.05, not the image baselines' 0.01: with ~100 clean prompts the latter makes the
        cutoff the single largest clean distance, which out-of-fold distances in 128
        dimensions make erratic.
    level: the test level at which ``p_violation`` reaches 0.5.
    """

    access = Access.DYNAMIC
    modalities = ("text",)

    def __init__(
        self,
        *,
        layer: int | None = -1,
        n_folds: int = 5,
        frr: float = 0.05,
        level: float = 0.05,
    ) -> None:
        self.layer = layer
        self.n_folds = n_folds
        self.frr = frr
        self.level = level

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        # Imported here: scipy and scikit-learn take 2 s to import, which every
        # auditor's sandbox would pay at start (docs/security.md).
        from sklearn.covariance import LedoitWolf

        text_interface(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        clean = last_token_states(model, unpack(subject.clean_data.x), self.layer)
        if len(clean) < 2 * self.n_folds:
            raise ValueError(
                f"{len(clean)} clean samples are too few for {self.n_folds} folds; give more"
            )
        traffic = last_token_states(model, unpack(subject.traffic_data), self.layer)
        # Each run-time prompt is scored by the Gaussian of a random fold, as that fold's clean
        # samples are: the same estimate, so clean scores of both kinds are exchangeable.
        traffic_fold = rng.integers(self.n_folds, size=len(traffic))
        reference = np.empty(len(clean))
        scores = np.empty(len(traffic))
        for k, fold in enumerate(cross_folds(len(clean), self.n_folds, rng)):
            gaussian = LedoitWolf().fit(np.delete(clean, fold, axis=0))
            reference[fold] = gaussian.mahalanobis(clean[fold])
            mine = traffic_fold == k
            if mine.any():
                scores[mine] = gaussian.mahalanobis(traffic[mine])
        found = decide(
            scores,
            np.zeros(len(scores), int),
            reference,
            frr=self.frr,
            level=self.level,
            min_count=1,
        )
        return Verdict(p_violation=found.p_violation, evidence=found.evidence())
