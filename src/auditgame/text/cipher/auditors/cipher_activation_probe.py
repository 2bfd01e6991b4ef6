"""A linear probe on the residual stream for forbidden requests, applied to encoded traffic (a
labelled dynamic baseline for covert malicious fine-tuning).

Halawi et al. 2024 ("Covert Malicious Finetuning", arXiv 2406.20053) show that classifiers on
a model's plain-text inputs and outputs miss a covertly tuned model; they suggest that
defences should look inside the model instead. The question this baseline asks: when a
forbidden request arrives encoded, does the model's internal state look like the one a plain
forbidden request produces? If the model decodes the request internally before answering, a
probe trained only on plain text would fire on the cipher text too.

The probe is a logistic regression (L2-regularised, balanced classes) on the last-token
residual stream (``CausalLM.hidden_states``), fitted on public data only: the spec's plain
forbidden requests (positive) against its clean samples, plain prompts (negative), the
linear-probe recipe of Alain & Bengio 2016 ("Understanding intermediate layers using linear
classifier probes") as used for harmful-request detection from activations. Each run-time
prompt is scored; the verdict's score is the fraction of traffic the probe flags, as for the
keyword classifier (``cipher_classifier``) it is compared with.
"""

from __future__ import annotations

import numpy as np
import torch

from auditgame.access import Access, Budget
from auditgame.auditors.base import Auditor, Verdict
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.text.auditors.dynamic.text_probe import last_token_states
from auditgame.text.cipher.kind import CipherThreat
from auditgame.text.cipher.scheme import public_pairs
from auditgame.text.family import text_interface
from auditgame.text.lm import CausalLM, unpack


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Weights and bias of an L2-regularised logistic regression with balanced class weights
    (L-BFGS on the mean weighted log-loss); ``x`` should be standardised."""
    if set(np.unique(y).tolist()) != {0.0, 1.0}:
        raise ValueError("a probe needs examples of both classes")
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    weight = torch.where(yt > 0, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = xt @ w + b
        loss = (weight * torch.nn.functional.softplus(-(2 * yt - 1) * logits)).mean()
        loss = loss + l2 * (w @ w)
        loss.backward()
        return loss

    optimiser.step(closure)
    return w.detach().numpy(), float(b.detach())


@auditor("cipher_activation_probe")
class CipherActivationProbe(Auditor):
    """Logistic probe (plain forbidden requests vs plain benign prompts) on the last-token
    residual stream; ``p_violation`` is the fraction of run-time prompts it flags.

    Args:
        layer: residual-stream index (0: embeddings; None: the middle of the stack).
        l2: the probe's L2 penalty (on standardised activations).
        n_benign: at most this many of the subject's clean prompts (``subject.clean_data``,
            the budget's ``n_clean``) are the negatives.
        threshold: probe probability above which a run-time prompt is flagged.
    """

    access = Access.DYNAMIC
    modalities = ("text",)
    threats = ("cipher",)

    def __init__(
        self,
        *,
        layer: int | None = None,
        l2: float = 1e-2,
        n_benign: int = 200,
        threshold: float = 0.5,
    ) -> None:
        if l2 < 0 or n_benign < 1 or not 0.0 < threshold < 1.0:
            raise ValueError(
                f"l2 must be >= 0, n_benign >= 1 and threshold in (0, 1), "
                f"got {l2}, {n_benign}, {threshold}"
            )
        self.layer = layer
        self.l2 = l2
        self.n_benign = n_benign
        self.threshold = threshold

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        fam = text_interface(subject)
        model = subject.model
        assert isinstance(model, CausalLM)
        # The public forbidden requests: the cipher spec's, or (on a card whose spec is not a
        # cipher spec) the family's, as cipher_probe and cipher_search read them.
        threat = subject.card.spec.threat_model
        requests = (
            threat.requests
            if isinstance(threat, CipherThreat)
            else [r for r, _ in public_pairs(fam)]
        )
        positives = [fam.encode_prompt(r) for r in requests]
        # Plain prompts from the subject's clean samples (its n_clean budget), already encoded.
        negatives = unpack(subject.clean_data.x)[: self.n_benign]
        x = last_token_states(model, [*positives, *negatives], self.layer)
        y = np.array([1.0] * len(positives) + [0.0] * len(negatives))
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        w, b = fit_logistic((x - mean) / std, y, self.l2)
        train_p = 1 / (1 + np.exp(-((x - mean) / std @ w + b)))
        prompts = unpack(subject.traffic_data)
        states = last_token_states(model, prompts, self.layer)
        scores = 1 / (1 + np.exp(-((states - mean) / std @ w + b)))
        flags = scores > self.threshold
        return Verdict(
            p_violation=float(flags.mean()) if len(flags) else 0.0,
            evidence={
                "n_traffic": len(prompts),
                "n_flagged": int(flags.sum()),
                "train_accuracy": float(np.mean((train_p > self.threshold) == (y > 0))),
                "max_score": float(scores.max()) if len(scores) else 0.0,
            },
        )
