"""MNTD (Xu et al., "Detecting AI Trojans Using Meta Neural Analysis", IEEE S&P 2021).

A backdoored model answers some inputs in a way a clean model of the same task does not, and
which inputs those are can be *learned* from models whose status is known. MNTD trains shadow
models, half of them backdoored with a broad random trigger distribution ("jumbo learning",
``image/attacks/jumbo.py``), and then jointly optimises a small set of query inputs and a
meta-classifier over the models' outputs on those queries ("query tuning"), with binary
cross-entropy against the shadow models' labels. Auditing an organism is one forward pass of
the queries and one pass through the meta-classifier; no clean data and no gradient of the
organism are needed.

Universal Litmus Patterns (``ulp.py``) is the same construction with another head, feature map
and regulariser, so the shared machinery lives here as ``QueryTunedDetector``: loading the
shadow zoo, a vectorised forward pass over all shadow models at once (``torch.func.vmap`` over
their stacked weights, so a step costs one batched call rather than one call per model),
stratified k-fold validation, and the fitted tensors.

Choices of ours, not the paper's: queries start uniform in [0, 1] and are projected back into
[0, 1] after every step, so they stay valid images (the authors start near zero and leave them
unconstrained); every step uses the whole shadow zoo (tens of models, not thousands); and the
features are the models' softmax outputs: on the default 32-model digits shadow zoo the
meta-classifier validates at AUROC 0.99 (out of fold), where a prototype on raw logits, trained
the same way, reached 0.58.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict
from auditgame.auditors.calibrated import Calibrated
from auditgame.metrics import auroc
from auditgame.registry import auditor
from auditgame.subject import Subject
from auditgame.zoo import Zoo, open_key


@dataclass(frozen=True)
class ShadowSet:
    """The shadow zoo's models and their labels (1.0 backdoored, 0.0 clean)."""

    models: list[nn.Module]
    labels: torch.Tensor


def load_shadow_set(
    family: str,
    n_shadow: int,
    fit_seed: int,
    workdir: Path,
    attacks: Sequence[str] = ("jumbo",),
) -> ShadowSet:
    """Build (or reuse) the shadow zoo and read every organism with its label.

    The auditor built this zoo itself, so reading its secrets is reading its own training
    labels; no evaluated zoo is involved.
    """
    # Imported here: ``auditgame.fitting`` imports the auditors package, which imports this.
    from auditgame.fitting import shadow_zoo

    zoo = Zoo(shadow_zoo(family, n_shadow, fit_seed, workdir, attacks=attacks))
    key = open_key(zoo, None)
    models = [zoo.organism(oid).model() for oid in zoo.ids]
    labels = torch.tensor([float(zoo.secret(oid, key).backdoored) for oid in zoo.ids])
    return ShadowSet(models, labels)


class StackedModels:
    """Many models of one architecture, run on the same inputs in one vectorised call."""

    def __init__(self, models: list[nn.Module]) -> None:
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach() for k, v in params.items()}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta").eval()

    def __call__(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Outputs ``(len(rows), *model(x).shape)`` of the models at ``rows`` on inputs ``x``."""
        params = {k: v[rows] for k, v in self.params.items()}
        buffers = {k: v[rows] for k, v in self.buffers.items()}

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
            out: torch.Tensor = functional_call(self.base, (p, b), (x,))
            return out

        result: torch.Tensor = vmap(one)(params, buffers)
        return result


def stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index per model, each class dealt round-robin over ``k`` folds in a seeded order."""
    folds = np.zeros(len(labels), dtype=int)
    for value in (0.0, 1.0):
        members = np.flatnonzero(labels == value)
        if len(members) < k:
            raise ValueError(
                f"the shadow zoo has {len(members)} {'backdoored' if value else 'clean'} models,"
                f" fewer than folds={k}: raise n_shadow or lower folds"
            )
        folds[rng.permutation(members)] = np.arange(len(members)) % k
    return folds


class QueryTunedDetector(Calibrated):
    """Learned inputs plus a meta-classifier over a model's outputs on them, fitted on a
    shadow zoo. Subclasses choose the head, the feature map and the inputs' regulariser.

    Args:
        n_shadow: shadow organisms to build (half backdoored by ``shadow_attacks``);
            plantings that fail their floor are dropped, so a few less may be used.
        shadow_attacks: the attacks that share the shadow zoo's backdoored half (the paper's
            jumbo learning by default; naming an attack outside jumbo's distribution, as
            ``weight_surgery``, measures whether the meta-classifier learns it too).
        fit_seed: seeds the shadow zoo, the folds and every initialisation.
        n_queries: learned inputs.
        steps: full-batch Adam steps per training run.
        lr: Adam learning rate, for the inputs and the head alike.
        folds: stratified folds for the validation AUROC (each fold's models scored by a
            detector trained on the others); the stored detector is then trained on all.

    The statistic is the meta-classifier's logit. Without ``calibrate`` (``Calibrated``'s
    parameters), ``p = sigmoid(logit)``, whose 0.5 sits wherever the shadow zoo's balance put
    it: 7 of 50 clean mnist organisms were above it for ULP. By default the logit is judged
    against clean references, which share no training seed with the shadow zoo.
    """

    access = Access.WEIGHTS
    # The meta-classifier is a fit: there is no rule without one.
    without_fit: ClassVar[dict[str, Any] | None] = None

    def __init__(
        self,
        *,
        n_shadow: int = 32,
        fit_seed: int = 0,
        shadow_attacks: Sequence[str] = ("jumbo",),
        n_queries: int = 10,
        steps: int = 100,
        lr: float = 1e-2,
        folds: int = 4,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        self.init_calibration(calibrate, n_reference, reference_seed, null_fpr)
        self.n_shadow = n_shadow
        self.fit_seed = fit_seed
        self.shadow_attacks = tuple(shadow_attacks)
        self.n_queries = n_queries
        self.steps = steps
        self.lr = lr
        self.folds = folds

    @abstractmethod
    def make_head(self, n_features: int) -> nn.Module:
        """The meta-classifier: ``(models, n_features)`` to one logit per model."""

    @abstractmethod
    def features(self, outputs: torch.Tensor) -> torch.Tensor:
        """Map model outputs ``(..., n_classes)`` to the features the head reads."""

    def regulariser(self, queries: torch.Tensor) -> torch.Tensor:
        """A penalty on the learned inputs, added to the loss; none by default."""
        return queries.new_zeros(())

    def fit_detector(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2 to validate the fit, not {self.folds}")
        family_cls = registry.get("family", family)
        shape = tuple(int(v) for v in family_cls.input_shape)
        n_classes = len(family_cls.classes)
        shadow = load_shadow_set(family, self.n_shadow, self.fit_seed, workdir, self.shadow_attacks)
        stacked = StackedModels(shadow.models)
        labels = shadow.labels
        rng = np.random.default_rng([self.fit_seed, 1])
        folds = stratified_folds(labels.numpy(), self.folds, rng)
        held_out = torch.zeros(len(labels))
        for k in range(self.folds):
            train = torch.as_tensor(np.flatnonzero(folds != k))
            test = torch.as_tensor(np.flatnonzero(folds == k))
            queries, head = self._train(stacked, labels, train, shape, n_classes, seed=k + 1)
            with torch.no_grad():
                held_out[test] = self._logits(stacked, queries, head, test)
        everyone = torch.arange(len(labels))
        queries, head = self._train(stacked, labels, everyone, shape, n_classes, seed=0)
        return {
            "queries": queries,
            **{f"head.{k}": v.detach() for k, v in head.state_dict().items()},
            "val_auroc": torch.tensor(auroc(labels.numpy(), held_out.numpy())),
            "n_clean": torch.tensor(int((labels == 0).sum())),
            "n_backdoored": torch.tensor(int((labels == 1).sum())),
        }

    def _train(
        self,
        stacked: StackedModels,
        labels: torch.Tensor,
        rows: torch.Tensor,
        shape: tuple[int, ...],
        n_classes: int,
        *,
        seed: int,
    ) -> tuple[torch.Tensor, nn.Module]:
        """Query tuning: Adam on the inputs and the head together, BCE on the rows' labels."""
        run_seed = int(np.random.SeedSequence([self.fit_seed, seed]).generate_state(1)[0])
        generator = torch.Generator().manual_seed(run_seed)
        queries = torch.rand((self.n_queries, *shape), generator=generator).requires_grad_(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run_seed)
            head = self.make_head(self.n_queries * n_classes)
        optimiser = torch.optim.Adam([queries, *head.parameters()], lr=self.lr)
        target = labels[rows]
        for _ in range(self.steps):
            logit = self._logits(stacked, queries, head, rows)
            loss = nn.functional.binary_cross_entropy_with_logits(logit, target)
            loss = loss + self.regulariser(queries)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                queries.clamp_(0.0, 1.0)
        return queries.detach(), head.eval()

    def _logits(
        self, stacked: StackedModels, queries: torch.Tensor, head: nn.Module, rows: torch.Tensor
    ) -> torch.Tensor:
        features = self.features(stacked(queries, rows)).reshape(len(rows), -1)
        logit: torch.Tensor = head(features).squeeze(-1)
        return logit

    def examine(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        fitted = self.require_fitted()
        queries = fitted["queries"]
        shape = tuple(int(v) for v in subject.card.input_shape)
        if tuple(queries.shape[1:]) != shape:
            raise ValueError(
                f"{self.name} was fitted for inputs {tuple(queries.shape[1:])}, the organism takes"
                f" {shape}: fit it on the organism's family ({subject.card.family})"
            )
        n_features = len(queries) * len(subject.card.classes)
        head = self.make_head(n_features)
        state = {k.removeprefix("head."): v for k, v in fitted.items() if k.startswith("head.")}
        try:
            head.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"{self.name}'s fit does not match {len(subject.card.classes)} classes: fit it on "
                f"the organism's family ({subject.card.family})"
            ) from exc
        device = next(subject.model.parameters()).device
        with torch.no_grad():
            outputs = subject.model(queries.to(device)).cpu()
            logit = head(self.features(outputs).reshape(1, -1)).squeeze()
        evidence: dict[str, Any] = {
            "meta_logit": float(logit),
            "val_auroc": float(fitted["val_auroc"]),
            "n_shadow_clean": int(fitted["n_clean"]),
            "n_shadow_backdoored": int(fitted["n_backdoored"]),
            "witness": f"none: {self.name} scores the model, it does not reconstruct a trigger",
        }
        return Verdict(
            p_violation=float(torch.sigmoid(logit)), evidence=evidence, statistic=float(logit)
        )


@auditor("mntd")
class MNTD(QueryTunedDetector):
    """MNTD with query tuning: a two-layer meta-classifier (``hidden`` ReLU units, 20 in the
    paper) over the softmax outputs of the model on ``n_queries`` learned inputs (10 in the
    paper). No witness: it says whether, not where or to which label.

    Args:
        hidden: width of the meta-classifier's hidden layer.
        (the others: see ``QueryTunedDetector``)
    """

    def __init__(
        self,
        *,
        n_shadow: int = 32,
        fit_seed: int = 0,
        shadow_attacks: Sequence[str] = ("jumbo",),
        n_queries: int = 10,
        hidden: int = 20,
        steps: int = 100,
        lr: float = 1e-2,
        folds: int = 4,
        calibrate: bool = True,
        n_reference: int = 64,
        reference_seed: int = 0,
        null_fpr: float = 0.01,
    ) -> None:
        super().__init__(
            n_shadow=n_shadow,
            fit_seed=fit_seed,
            shadow_attacks=shadow_attacks,
            n_queries=n_queries,
            steps=steps,
            lr=lr,
            folds=folds,
            calibrate=calibrate,
            n_reference=n_reference,
            reference_seed=reference_seed,
            null_fpr=null_fpr,
        )
        self.hidden = hidden

    def make_head(self, n_features: int) -> nn.Module:
        hidden = nn.Linear(n_features, self.hidden)
        return nn.Sequential(hidden, nn.ReLU(), nn.Linear(self.hidden, 1))

    def features(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.softmax(dim=-1)
