"""Optuna samplers for a sweep, each trial seeded from the configured seed and its trial number.

Why per trial: every sweeper of a study (parallel workers, a resumed sweep) builds its sampler from
the same ``hydra.sweeper.seed``; one seeded sampler per process replays the same random draws in
each of them. Trial numbers are handed out atomically by the storage, so seeding each trial's draws
from ``(seed, number)`` gives every trial of the study its own draws, and a single sweeper on a fresh
study still repeats itself exactly (trials 0, 1, 2, ... get the same seeds every time).
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, Mapping

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState


def trial_seed(seed: int | None, number: int) -> int | None:
    """The seed of trial ``number``'s draws: fixed by (seed, number); None stays random."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")


class PerTrialSeed(BaseSampler):
    """Delegates each trial to its own sampler, built by ``make(trial_seed(seed, number))``.

    TPE, random, CMA-ES and GP keep their state in the study's storage (or keep none), so a fresh
    instance per trial samples as one long-lived instance would, with its own random stream.
    """

    def __init__(self, make: Callable[[int | None], BaseSampler], seed: int | None):
        self._make, self._seed = make, seed
        self._by_number: dict[int, BaseSampler] = {}

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number not in self._by_number:
            self._by_number[trial.number] = self._make(trial_seed(self._seed, trial.number))
        return self._by_number[trial.number]

    def before_trial(self, study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial: FrozenTrial, state: TrialState, values) -> None:
        sampler = self._for(trial)
        self._by_number.pop(trial.number, None)
        sampler.after_trial(study, trial, state, values)

    def forget(self, number: int) -> None:
        """Drop trial ``number``'s sampler (a trial failed without ``tell``)."""
        self._by_number.pop(number, None)

    def reseed_rng(self) -> None:  # seeds are per trial already
        pass


def grid_size(space: Mapping[str, BaseDistribution]) -> int:
    return math.prod(len(d.choices) for d in space.values())


def _grid(space: Mapping[str, BaseDistribution]) -> dict[str, list]:
    bad = [k for k, d in space.items() if not isinstance(d, CategoricalDistribution)]
    if bad:
        raise ValueError(f"hydra/sweeper/sampler=grid needs choice(...) for every entry; "
                         f"hydra.sweeper.params.{bad[0]} is not a choice")
    return {k: list(d.choices) for k, d in space.items()}


def make_sampler(name: str, make: Callable[..., BaseSampler], seed: int | None,
                 space: Mapping[str, BaseDistribution]) -> BaseSampler:
    """The sweep's sampler from ``make`` (the constructor Hydra built from ``hydra/sweeper/sampler=
    name``, options bound). QMC and grid keep one seed for the whole study: both walk a sequence that
    the seed fixes (QMC's scramble, the grid's shuffled order) by an index the study hands out (QMC's
    sample id, the grid's trial number), so workers do not repeat points, and a per-trial seed would
    mix several sequences. Every other sampler draws per trial (:class:`PerTrialSeed`)."""
    if name == "gp":
        try:
            import torch  # noqa: F401  (Optuna's GPSampler needs it)
        except ImportError:
            raise ValueError("hydra/sweeper/sampler=gp needs PyTorch: pip install torch") from None
    if name == "grid":
        return make(_grid(space), seed=seed)
    if name == "qmc":
        return make(seed=seed)
    make(seed=trial_seed(seed, 0))  # bad options fail now, before any trial
    return PerTrialSeed(lambda trial_seed_: make(seed=trial_seed_), seed)


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler, minus ``study.stop()`` after the last point: that raises outside
    ``study.optimize``; the sweep ends by its own count (n_trials is capped at the grid's size)."""

    exhausted = False

    def after_trial(self, study, trial, state, values) -> None:
        try:
            super().after_trial(study, trial, state, values)
        except RuntimeError as exc:
            if "Study.stop" not in str(exc):
                raise
            self.exhausted = True
