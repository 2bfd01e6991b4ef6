"""The fitting stage: fitted once, cached by parameters, loaded by workers, kept off the zoo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from auditgame import registry
from auditgame.access import Access, Budget
from auditgame.auditors.base import Verdict
from auditgame.fitting import FittedAuditor, ensure_fitted, fit_here, shadow_seed
from auditgame.game import AuditorSpec, Game, play
from auditgame.run.local import LocalExecutor
from auditgame.store import Store
from auditgame.subject import Subject

# Trains or optimises: CI runs it again under ATEN_CPU_CAPABILITY=default (make test-kernels).
pytestmark = pytest.mark.kernels


@registry.auditor("counting_fit_test")
class CountingFit(FittedAuditor):
    """Fits a constant from its parameter; counts how often it is fitted, in this process
    and, for a fit made in a sandbox, by a file it leaves in its work folder."""

    access = Access.WEIGHTS
    fits = 0

    def __init__(self, *, level: float = 0.25) -> None:
        self.level = level

    def fit(self, family: str, workdir: Path) -> dict[str, torch.Tensor]:
        type(self).fits += 1
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / f"fitted-{len(list(workdir.glob('fitted-*')))}").touch()
        return {"level": torch.tensor([self.level])}

    def run(self, subject: Subject, budget: Budget, rng: np.random.Generator) -> Verdict:
        return Verdict(p_violation=float(self.require_fitted()["level"]))


@pytest.fixture
def counting() -> type[CountingFit]:
    CountingFit.fits = 0
    return CountingFit


def test_fit_is_cached_by_parameters(tmp_path: Path, counting: type[CountingFit]) -> None:
    first = ensure_fitted(counting(level=0.25), "digits", tmp_path)
    again = ensure_fitted(counting(level=0.25), "digits", tmp_path)
    other = ensure_fitted(counting(level=0.75), "digits", tmp_path)
    assert first == again != other
    assert counting.fits == 2
    assert float(load_file(other)["level"]) == 0.75
    assert not list(tmp_path.rglob(".*.tmp"))


def test_unfitted_auditor_says_how_to_fit(tiny_zoo, counting: type[CountingFit]) -> None:
    from auditgame.run.task import make_subject

    organism = tiny_zoo.zoo.organism(tiny_zoo.zoo.ids[0])
    subject = make_subject(organism, Access.WEIGHTS, Budget())
    finding = counting().audit(subject, Budget())
    assert finding.error is not None and "ensure_fitted" in finding.error


def test_game_fits_once_and_workers_load_the_fit(
    tiny_zoo, tmp_path: Path, counting: type[CountingFit]
) -> None:
    game = Game(zoo=tiny_zoo.zoo.root, auditors=[AuditorSpec(name=counting.name)])
    with Store(tmp_path / "results.sqlite") as store:
        game_id = play(game, tiny_zoo.key, store, LocalExecutor(1))
        scores = store.scores(game_id)
        again = Game(zoo=tiny_zoo.zoo.root, auditors=game.auditors, seed=1)
        play(again, tiny_zoo.key, store, LocalExecutor(1))
    fits = tmp_path / "fits" / "digits"
    # Fitted once, in its sandbox (not in this process), for both games.
    assert counting.fits == 0
    assert len(list((fits / "work" / counting.name).glob("fitted-*"))) == 1
    assert len(scores) == len(tiny_zoo.zoo.ids)
    assert {s.p_violation for s in scores} == {0.25}
    (record,) = fits.glob("counting_fit_test-*.json")
    assert (fits / f"{json.loads(record.read_text())['sha256']}.safetensors").is_file()


def test_fit_here_skips_auditors_without_a_fitting_stage(tmp_path: Path) -> None:
    plain = registry.get("auditor", "flip_search")()
    assert fit_here(plain, "digits", tmp_path) is None
    assert not any(tmp_path.iterdir())


def _organism_seeds(zoo_seed: int, n: int) -> set[int]:
    # As zoo.build_zoo derives each organism's training seed.
    return {int(s.generate_state(1)[0]) for s in np.random.SeedSequence(zoo_seed).spawn(n)}


def test_shadow_organisms_train_from_seeds_no_small_zoo_uses() -> None:
    evaluated = set().union(*(_organism_seeds(seed, 400) for seed in range(50)))
    shadows = set().union(*(_organism_seeds(shadow_seed(k), 64) for k in range(10)))
    assert len(shadows) == 640
    assert not shadows & evaluated


def test_reference_organisms_share_no_seed_with_shadow_or_evaluated_zoos() -> None:
    """A meta-classifier's null must not be scored on a model it was trained on, nor a
    detector's null include an organism it is evaluated on."""
    evaluated = set().union(*(_organism_seeds(seed, 400) for seed in range(50)))
    shadows = set().union(*(_organism_seeds(shadow_seed(k), 64) for k in range(10)))
    references = set().union(
        *(_organism_seeds(shadow_seed(k, "references"), 64) for k in range(10))
    )
    assert len(references) == 640
    assert not references & evaluated and not references & shadows
